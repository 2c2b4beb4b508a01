//! The cutover's pure decisions: the one template change that moves a workload's pods to
//! Workload ID (used by `podid cutover plan`, `switch` and `--patches`), which tool manages a
//! workload (GitOps, Helm), what holds a workload back, where its template lives, and whether
//! its rollout is done. No I/O: the CLI reads the cluster and applies what is decided here.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::migration::{Stage, WorkloadMigration};
use crate::plan::{Assessment, Finding, Severity, Verdict};
use crate::{POD_LABEL, WI_USE_LABEL};

/// How a kind takes a new pod template.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TemplateKind {
    /// Deployment, StatefulSet, DaemonSet: a changed template rolls the pods out.
    Rollout,
    /// CronJob: the next Job uses the new template; nothing restarts now.
    NextRun,
    /// Job, Pod, a bare ReplicaSet, an owner podid does not know: the template cannot be changed
    /// in place (or changing it moves no pod); the workload must be re-created.
    NotInPlace,
}

/// How `kind` takes a new pod template.
pub fn template_kind(kind: &str) -> TemplateKind {
    match kind {
        "Deployment" | "StatefulSet" | "DaemonSet" => TemplateKind::Rollout,
        "CronJob" => TemplateKind::NextRun,
        _ => TemplateKind::NotInPlace,
    }
}

/// The JSON path of the pod template in an object of `kind` (`None` for a bare Pod).
pub fn template_path(kind: &str) -> Option<&'static [&'static str]> {
    match kind {
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => {
            Some(&["spec", "template"])
        }
        "CronJob" => Some(&["spec", "jobTemplate", "spec", "template"]),
        _ => None,
    }
}

/// The pod template of `obj` (a workload of `kind` as JSON).
pub fn template_of<'a>(kind: &str, obj: &'a Value) -> Option<&'a Value> {
    template_path(kind)?
        .iter()
        .try_fold(obj, |v, key| v.get(*key))
}

/// `value` placed at the template path of `kind` (`{"spec": {"template": value}}`).
pub fn at_template_path(kind: &str, value: Value) -> Option<Value> {
    Some(
        template_path(kind)?
            .iter()
            .rev()
            .fold(value, |v, key| json!({ *key: v })),
    )
}

/// What moves a workload's pods to Workload ID: its template's `serviceAccountName` set to the
/// target ServiceAccount where it differs, and the label `azure.workload.identity/use: "true"`.
/// `aadpodidbinding` stays, so pod identity keeps serving during the rollout.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TemplateChange {
    /// The new `spec.serviceAccountName`, when it changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    /// Labels to set (`azure.workload.identity/use: "true"` unless already there).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// The `aadpodidbinding` label the template keeps during the rollout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keeps_binding_label: Option<String>,
}

impl TemplateChange {
    /// The change for a template whose `azure.workload.identity/use` label, ServiceAccount
    /// (`None`: unset, so `default`) and `aadpodidbinding` label are these.
    pub fn new(
        use_label: Option<&str>,
        service_account: Option<&str>,
        binding_label: Option<&str>,
        target: &str,
    ) -> Self {
        let current = service_account
            .filter(|s| !s.is_empty())
            .unwrap_or("default");
        let mut labels = BTreeMap::new();
        if use_label != Some("true") {
            labels.insert(WI_USE_LABEL.to_owned(), "true".to_owned());
        }
        Self {
            service_account_name: (current != target).then(|| target.to_owned()),
            labels,
            keeps_binding_label: binding_label.map(str::to_owned),
        }
    }

    /// The change for a workload as the plan sees it.
    pub fn for_assessment(a: &Assessment) -> Option<Self> {
        let target = a.target_service_account.as_deref()?;
        let labels = &a.workload.labels;
        Some(Self::new(
            labels.get(WI_USE_LABEL).map(String::as_str),
            Some(a.workload.service_account.as_str()),
            labels.get(POD_LABEL).map(String::as_str),
            target,
        ))
    }

    /// The change for a pod template as JSON (what the API server returned).
    pub fn for_template(template: &Value, target: &str) -> Self {
        let label = |k: &str| {
            template
                .pointer("/metadata/labels")
                .and_then(|l| l.get(k))
                .and_then(Value::as_str)
        };
        Self::new(
            label(WI_USE_LABEL),
            template
                .pointer("/spec/serviceAccountName")
                .and_then(Value::as_str),
            label(POD_LABEL),
            target,
        )
    }

    /// True when the template already is as the cutover wants it.
    pub fn is_empty(&self) -> bool {
        self.service_account_name.is_none() && self.labels.is_empty()
    }

    /// The change as a strategic-merge (and JSON merge) patch of the pod template.
    pub fn template_patch(&self) -> Value {
        let mut t = json!({});
        if !self.labels.is_empty() {
            t["metadata"] = json!({ "labels": self.labels });
        }
        if let Some(sa) = &self.service_account_name {
            t["spec"] = json!({ "serviceAccountName": sa });
        }
        t
    }

    /// The change as a patch of a whole workload of `kind` (`None` for a bare Pod).
    pub fn workload_patch(&self, kind: &str) -> Option<Value> {
        at_template_path(kind, self.template_patch())
    }

    /// The change as a kustomize-compatible strategic-merge patch file: `apiVersion`, `kind`,
    /// `metadata.name` (and namespace) and the template change.
    pub fn kustomize_patch(
        &self,
        api_version: &str,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> Option<Value> {
        let mut p = self.workload_patch(kind)?;
        let obj = p.as_object_mut()?;
        let mut out = serde_json::Map::new();
        out.insert("apiVersion".into(), api_version.into());
        out.insert("kind".into(), kind.into());
        out.insert(
            "metadata".into(),
            json!({"name": name, "namespace": namespace}),
        );
        out.append(obj);
        Some(Value::Object(out))
    }
}

/// A JSON merge patch (RFC 7386) that turns `current` into `wanted` exactly: changed values
/// replaced, keys `wanted` lacks set to `null` (removed), arrays replaced whole. `None` when they
/// are equal.
pub fn merge_patch_to(current: &Value, wanted: &Value) -> Option<Value> {
    if current == wanted {
        return None;
    }
    match (current, wanted) {
        (Value::Object(c), Value::Object(w)) => {
            let mut p = serde_json::Map::new();
            for k in c.keys().filter(|k| !w.contains_key(*k)) {
                p.insert(k.clone(), Value::Null);
            }
            for (k, wv) in w {
                match c.get(k) {
                    Some(cv) => {
                        if let Some(d) = merge_patch_to(cv, wv) {
                            p.insert(k.clone(), d);
                        }
                    }
                    None => {
                        p.insert(k.clone(), wv.clone());
                    }
                }
            }
            Some(Value::Object(p))
        }
        _ => Some(wanted.clone()),
    }
}

/// The patch of a workload of `kind` that restores its pod template to `recorded` exactly.
pub fn restore_patch(kind: &str, current_template: &Value, recorded: &Value) -> Option<Value> {
    at_template_path(kind, merge_patch_to(current_template, recorded)?)
}

/// The patch of a workload of `kind` that removes `aadpodidbinding` from its pod template (what
/// `podid cutover finalize` applies once verify passed): a JSON merge patch. `None` when the
/// template has no such label (or the kind has no template).
pub fn finalize_patch(kind: &str, template: &Value) -> Option<Value> {
    template.pointer("/metadata/labels")?.get(POD_LABEL)?;
    at_template_path(kind, json!({"metadata": {"labels": {POD_LABEL: null}}}))
}

/// The environment variables the Workload ID webhook injects into every container of a labelled
/// pod (v1.6.0).
pub const WEBHOOK_ENV: [&str; 4] = [
    "AZURE_CLIENT_ID",
    "AZURE_TENANT_ID",
    "AZURE_FEDERATED_TOKEN_FILE",
    "AZURE_AUTHORITY_HOST",
];

/// What of the Workload ID webhook's injection a pod (its `spec` as JSON) lacks: in every
/// container [`WEBHOOK_ENV`] (`AZURE_CLIENT_ID` equal to `client_id` when given), and
/// `AZURE_FEDERATED_TOKEN_FILE` inside a mounted projected volume whose ServiceAccount token has
/// the audience `api://AzureADTokenExchange`. Empty: injected.
pub fn injection_problems(pod_spec: &Value, client_id: Option<&str>) -> Vec<String> {
    let mut out = Vec::new();
    let empty = Vec::new();
    let arr = |v: &Value, k: &str| v.get(k).and_then(Value::as_array).cloned();
    // (volume name, file path inside it) of every exchange-audience token projection.
    let tokens: Vec<(String, String)> = arr(pod_spec, "volumes")
        .unwrap_or_default()
        .iter()
        .flat_map(|v| {
            let name = v["name"].as_str().unwrap_or_default().to_owned();
            v.pointer("/projected/sources")
                .and_then(Value::as_array)
                .unwrap_or(&empty)
                .iter()
                .filter_map(|s| s.get("serviceAccountToken"))
                .filter(|t| t["audience"] == crate::migration::TOKEN_EXCHANGE_AUDIENCE)
                .map(|t| {
                    (
                        name.clone(),
                        t["path"].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect::<Vec<_>>()
        })
        .collect();
    if tokens.is_empty() {
        out.push(format!(
            "no projected ServiceAccount token volume with audience {}",
            crate::migration::TOKEN_EXCHANGE_AUDIENCE
        ));
    }
    let containers = arr(pod_spec, "containers").unwrap_or_default();
    if containers.is_empty() {
        out.push("no containers".into());
    }
    for c in &containers {
        let name = c["name"].as_str().unwrap_or_default();
        let env: BTreeMap<&str, &str> = c
            .get("env")
            .and_then(Value::as_array)
            .unwrap_or(&empty)
            .iter()
            .filter_map(|e| Some((e["name"].as_str()?, e["value"].as_str().unwrap_or_default())))
            .collect();
        let missing: Vec<&str> = WEBHOOK_ENV
            .iter()
            .copied()
            .filter(|k| env.get(k).is_none_or(|v| v.is_empty()))
            .collect();
        if !missing.is_empty() {
            out.push(format!("container {name}: no {}", missing.join(", ")));
        }
        if let (Some(want), Some(got)) = (client_id, env.get("AZURE_CLIENT_ID"))
            && want != *got
        {
            out.push(format!(
                "container {name}: AZURE_CLIENT_ID is {got}, its ServiceAccount names {want}"
            ));
        }
        if let Some(file) = env.get("AZURE_FEDERATED_TOKEN_FILE") {
            let mounted = c
                .get("volumeMounts")
                .and_then(Value::as_array)
                .unwrap_or(&empty)
                .iter()
                .any(|m| {
                    let dir = m["mountPath"]
                        .as_str()
                        .unwrap_or_default()
                        .trim_end_matches('/');
                    tokens.iter().any(|(vol, path)| {
                        m["name"] == vol.as_str() && *file == format!("{dir}/{path}")
                    })
                });
            if !mounted && !tokens.is_empty() {
                out.push(format!(
                    "container {name}: AZURE_FEDERATED_TOKEN_FILE {file} is in no mounted token volume"
                ));
            }
        }
    }
    out
}

/// The `apiVersion` of a workload kind the cutover changes.
pub fn api_version(kind: &str) -> &'static str {
    match kind {
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" => "apps/v1",
        "Job" | "CronJob" => "batch/v1",
        _ => "v1",
    }
}

/// The tool that keeps a workload's manifest: a live change to it would be reverted (GitOps) or
/// lost at the next release (Helm), so commit the patch instead.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ManagedBy {
    /// `argocd`, `flux` or `helm`.
    pub tool: String,
    /// The application, Kustomization, HelmRelease or release name.
    pub name: String,
}

/// Who manages a workload, from its own labels and annotations: Argo CD
/// (`argocd.argoproj.io/instance` label, `argocd.argoproj.io/tracking-id` annotation), Flux
/// (`kustomize.toolkit.fluxcd.io/name`, `helm.toolkit.fluxcd.io/name` labels), Helm
/// (`app.kubernetes.io/managed-by: Helm`, `meta.helm.sh/release-name`).
pub fn managed_by(
    labels: &BTreeMap<String, String>,
    annotations: &BTreeMap<String, String>,
) -> Option<ManagedBy> {
    let m = |tool: &str, name: &str| {
        Some(ManagedBy {
            tool: tool.into(),
            name: name.into(),
        })
    };
    if let Some(v) = labels.get("argocd.argoproj.io/instance") {
        return m("argocd", v);
    }
    if let Some(v) = annotations.get("argocd.argoproj.io/tracking-id") {
        return m("argocd", v.split(':').next().unwrap_or(v));
    }
    if let Some(v) = labels.get("kustomize.toolkit.fluxcd.io/name") {
        return m("flux", v);
    }
    if let Some(v) = labels.get("helm.toolkit.fluxcd.io/name") {
        return m("flux", v);
    }
    let release = annotations.get("meta.helm.sh/release-name");
    if labels
        .get("app.kubernetes.io/managed-by")
        .is_some_and(|v| v == "Helm")
        || release.is_some()
    {
        return m("helm", release.map(String::as_str).unwrap_or_default());
    }
    None
}

/// Why the cutover will not switch a workload now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HoldCode {
    /// The plan blocks it (its findings say why).
    Blocked,
    /// The bridge has not proven its credentials yet (no record, or not `Bridged`).
    NotBridged,
    /// Its template cannot be changed in place (Job, Pod, bare ReplicaSet, unknown owner).
    NotInPlace,
    /// A GitOps tool or Helm manages it: commit the patch (`--patches`) instead.
    Managed,
}

/// A reason the cutover holds a workload back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    pub code: HoldCode,
    pub message: String,
}

/// Why the cutover holds `a` back (empty: it may be switched). `record` is its
/// WorkloadMigration; `managed` who manages it; `allow_managed` lets managed workloads through.
pub fn holds(
    a: &Assessment,
    record: Option<&WorkloadMigration>,
    managed: Option<&ManagedBy>,
    allow_managed: bool,
) -> Vec<Hold> {
    let mut out = Vec::new();
    let hold = |code, message: String| Hold { code, message };
    if a.verdict == Verdict::Blocked {
        let why: Vec<String> = a
            .findings
            .iter()
            .filter(|f| f.severity == Severity::Blocker)
            .map(|f| format!("{}: {}", f.code.as_str(), f.message))
            .collect();
        out.push(hold(HoldCode::Blocked, why.join("; ")));
    }
    let status = record.and_then(|r| r.status.as_ref());
    let proven = status.is_some_and(|s| {
        s.stage == Some(Stage::Bridged)
            || (!s.credentials.is_empty() && s.credentials.iter().all(|c| c.ready))
    });
    if !proven {
        let why = match (record, status) {
            (None, _) => "no WorkloadMigration yet: podid-operator's bridge has not seen it (is the operator running with --bridge?)".to_owned(),
            (Some(_), None) => "its WorkloadMigration has no status yet: the bridge has not finished its side".to_owned(),
            (Some(_), Some(s)) => format!(
                "the bridge has not proven its federated credentials yet (stage {}, proven {})",
                s.stage.map_or("-", Stage::as_str),
                s.proven.as_deref().unwrap_or("0/0")
            ),
        };
        out.push(hold(HoldCode::NotBridged, why));
    }
    if template_kind(&a.workload.kind) == TemplateKind::NotInPlace {
        out.push(hold(
            HoldCode::NotInPlace,
            format!(
                "a {}'s pod template cannot be changed in place: re-create it with the template change",
                a.workload.kind
            ),
        ));
    }
    if let Some(m) = managed.filter(|_| !allow_managed) {
        out.push(hold(
            HoldCode::Managed,
            format!(
                "managed by {} ({}): a live change would be reverted; commit the patch from `podid cutover plan --patches DIR`, or pass --allow-managed",
                m.tool, m.name
            ),
        ));
    }
    out
}

/// The plan's blockers of a workload.
pub fn blockers(a: &Assessment) -> Vec<&Finding> {
    a.findings
        .iter()
        .filter(|f| f.severity == Severity::Blocker)
        .collect()
}

/// Where a rollout stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", content = "message", rename_all = "kebab-case")]
pub enum Rollout {
    /// Every pod runs the current template and is available.
    Done,
    /// Still rolling; the message says how far.
    Progressing(String),
    /// The controller gave up (Deployment: `ProgressDeadlineExceeded`).
    Failed(String),
}

/// Where the rollout of a workload of `kind` (its JSON, as the API server returned it) stands.
/// Kinds without a rollout (CronJob, Job, Pod, ReplicaSet) are `Done`.
pub fn rollout(kind: &str, obj: &Value) -> Rollout {
    let int = |p: &str| obj.pointer(p).and_then(Value::as_i64).unwrap_or(0);
    let generation = int("/metadata/generation");
    let observed = int("/status/observedGeneration");
    if template_kind(kind) == TemplateKind::Rollout && observed < generation {
        return Rollout::Progressing(format!(
            "waiting for the controller to see generation {generation}"
        ));
    }
    match kind {
        "Deployment" => {
            let want = obj
                .pointer("/spec/replicas")
                .and_then(Value::as_i64)
                .unwrap_or(1);
            let (updated, total, available) = (
                int("/status/updatedReplicas"),
                int("/status/replicas"),
                int("/status/availableReplicas"),
            );
            // Done wins over a deadline condition the controller has not yet replaced.
            if updated >= want && total == want && available >= want {
                return Rollout::Done;
            }
            let deadline = obj
                .pointer("/status/conditions")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .find(|c| c["type"] == "Progressing" && c["reason"] == "ProgressDeadlineExceeded");
            if let Some(c) = deadline {
                return Rollout::Failed(format!(
                    "ProgressDeadlineExceeded: {}",
                    c["message"].as_str().unwrap_or_default()
                ));
            }
            Rollout::Progressing(format!(
                "{updated} of {want} updated, {available} available, {total} in all"
            ))
        }
        "StatefulSet" => {
            let want = obj
                .pointer("/spec/replicas")
                .and_then(Value::as_i64)
                .unwrap_or(1);
            let on_delete = obj.pointer("/spec/updateStrategy/type") == Some(&json!("OnDelete"));
            let (updated, ready) = (int("/status/updatedReplicas"), int("/status/readyReplicas"));
            let same_revision =
                obj.pointer("/status/updateRevision") == obj.pointer("/status/currentRevision");
            if on_delete || (updated >= want && ready >= want && same_revision) {
                Rollout::Done
            } else {
                Rollout::Progressing(format!("{updated} of {want} updated, {ready} ready"))
            }
        }
        "DaemonSet" => {
            let want = int("/status/desiredNumberScheduled");
            let (updated, available) = (
                int("/status/updatedNumberScheduled"),
                int("/status/numberAvailable"),
            );
            if updated >= want && available >= want {
                Rollout::Done
            } else {
                Rollout::Progressing(format!(
                    "{updated} of {want} updated, {available} available"
                ))
            }
        }
        _ => Rollout::Done,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pretty_assertions::assert_eq;

    #[test]
    fn the_change_sets_the_service_account_where_it_differs_and_the_label() {
        let t = json!({"metadata": {"labels": {"app": "web", "aadpodidbinding": "web"}},
                       "spec": {"containers": [{"name": "c"}]}});
        let c = TemplateChange::for_template(&t, "web");
        assert_eq!(c.service_account_name.as_deref(), Some("web"));
        assert_eq!(c.keeps_binding_label.as_deref(), Some("web"));
        assert_eq!(
            c.template_patch(),
            json!({"metadata": {"labels": {"azure.workload.identity/use": "true"}},
                   "spec": {"serviceAccountName": "web"}})
        );
        // Its own ServiceAccount is the target: only the label.
        let t =
            json!({"metadata": {"labels": {"app": "db"}}, "spec": {"serviceAccountName": "db"}});
        let c = TemplateChange::for_template(&t, "db");
        assert_eq!(c.service_account_name, None);
        assert_eq!(
            c.workload_patch("CronJob").unwrap(),
            json!({"spec": {"jobTemplate": {"spec": {"template":
                {"metadata": {"labels": {"azure.workload.identity/use": "true"}}}}}}})
        );
        // Applied: nothing left.
        let t = json!({"metadata": {"labels": {"azure.workload.identity/use": "true"}},
                       "spec": {"serviceAccountName": "db"}});
        assert!(TemplateChange::for_template(&t, "db").is_empty());
        assert_eq!(c.workload_patch("Pod"), None);
    }

    #[test]
    fn kustomize_patches_name_the_object_then_change_its_template() {
        let c = TemplateChange::new(None, None, Some("web"), "web");
        let p = c
            .kustomize_patch("apps/v1", "Deployment", "shop", "web")
            .unwrap();
        assert_eq!(
            p,
            json!({"apiVersion": "apps/v1", "kind": "Deployment",
                   "metadata": {"name": "web", "namespace": "shop"},
                   "spec": {"template": {"metadata": {"labels": {"azure.workload.identity/use": "true"}},
                                         "spec": {"serviceAccountName": "web"}}}})
        );
        let keys: Vec<&String> = p.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["apiVersion", "kind", "metadata", "spec"]);
    }

    #[test]
    fn gitops_and_helm_are_recognised() {
        let l = |k: &str, v: &str| BTreeMap::from([(k.to_owned(), v.to_owned())]);
        let none = BTreeMap::new();
        let tool = |labels: &BTreeMap<String, String>, ann: &BTreeMap<String, String>| {
            managed_by(labels, ann).map(|m| (m.tool, m.name))
        };
        let p = |a: &str, b: &str| Some((a.to_owned(), b.to_owned()));
        assert_eq!(
            tool(&l("argocd.argoproj.io/instance", "shop"), &none),
            p("argocd", "shop")
        );
        assert_eq!(
            tool(
                &none,
                &l(
                    "argocd.argoproj.io/tracking-id",
                    "shop:apps/Deployment:shop/web"
                )
            ),
            p("argocd", "shop")
        );
        assert_eq!(
            tool(&l("kustomize.toolkit.fluxcd.io/name", "apps"), &none),
            p("flux", "apps")
        );
        assert_eq!(
            tool(&l("helm.toolkit.fluxcd.io/name", "web"), &none),
            p("flux", "web")
        );
        assert_eq!(
            tool(&l("app.kubernetes.io/managed-by", "Helm"), &none),
            p("helm", "")
        );
        assert_eq!(
            tool(&none, &l("meta.helm.sh/release-name", "web")),
            p("helm", "web")
        );
        assert_eq!(
            tool(&l("app.kubernetes.io/managed-by", "kubectl"), &none),
            None
        );
    }

    #[test]
    fn rollouts_are_done_failed_or_progressing() {
        let d = |status: Value| json!({"metadata": {"generation": 2}, "spec": {"replicas": 2}, "status": status});
        assert!(matches!(
            rollout("Deployment", &d(json!({"observedGeneration": 1}))),
            Rollout::Progressing(_)
        ));
        assert_eq!(
            rollout(
                "Deployment",
                &d(
                    json!({"observedGeneration": 2, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 2})
                )
            ),
            Rollout::Done
        );
        assert!(matches!(
            rollout(
                "Deployment",
                &d(
                    json!({"observedGeneration": 2, "replicas": 3, "updatedReplicas": 1, "availableReplicas": 2})
                )
            ),
            Rollout::Progressing(_)
        ));
        assert!(matches!(
            rollout("Deployment", &d(json!({"observedGeneration": 2, "replicas": 3,
                "conditions": [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded", "message": "too slow"}]}))),
            Rollout::Failed(m) if m.contains("too slow")
        ));
        let s = json!({"metadata": {"generation": 3}, "spec": {"replicas": 1},
            "status": {"observedGeneration": 3, "updatedReplicas": 1, "readyReplicas": 1,
                       "currentRevision": "a", "updateRevision": "b"}});
        assert!(matches!(
            rollout("StatefulSet", &s),
            Rollout::Progressing(_)
        ));
        let mut s = s;
        s["status"]["currentRevision"] = "b".into();
        assert_eq!(rollout("StatefulSet", &s), Rollout::Done);
        assert_eq!(rollout("CronJob", &json!({})), Rollout::Done);
    }

    #[test]
    fn finalize_removes_only_the_binding_label() {
        let t = json!({"metadata": {"labels": {"app": "web", "aadpodidbinding": "web"}}});
        assert_eq!(
            finalize_patch("CronJob", &t),
            Some(json!({"spec": {"jobTemplate": {"spec": {"template":
                {"metadata": {"labels": {"aadpodidbinding": null}}}}}}}))
        );
        assert_eq!(
            finalize_patch(
                "Deployment",
                &json!({"metadata": {"labels": {"app": "web"}}})
            ),
            None
        );
    }

    #[test]
    fn the_webhooks_injection_is_checked_env_volume_and_mount() {
        let env = |client: &str| {
            json!([{"name": "AZURE_CLIENT_ID", "value": client},
                   {"name": "AZURE_TENANT_ID", "value": "t"},
                   {"name": "AZURE_FEDERATED_TOKEN_FILE", "value": "/var/run/secrets/azure/wi/token/azure-identity-token"},
                   {"name": "AZURE_AUTHORITY_HOST", "value": "https://login.microsoftonline.com/"}])
        };
        let spec = json!({
            "containers": [{"name": "app", "env": env("c"),
                "volumeMounts": [{"name": "azure-workload-identity-reserved-x", "mountPath": "/var/run/secrets/azure/wi", "readOnly": true}]}],
            "volumes": [{"name": "azure-workload-identity-reserved-x", "projected": {"sources": [
                {"serviceAccountToken": {"audience": "api://AzureADTokenExchange", "expirationSeconds": 3600, "path": "token/azure-identity-token"}}]}}]});
        assert_eq!(injection_problems(&spec, Some("c")), Vec::<String>::new());
        let p = injection_problems(&spec, Some("d"));
        assert!(p[0].contains("AZURE_CLIENT_ID is c"), "{p:?}");
        let mut bare = spec.clone();
        bare["containers"][0]["env"] = json!([]);
        bare["volumes"] = json!([]);
        let p = injection_problems(&bare, None);
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(p[0].contains("no projected"), "{p:?}");
        assert!(
            p[1].contains("no AZURE_CLIENT_ID, AZURE_TENANT_ID"),
            "{p:?}"
        );
        let mut unmounted = spec;
        unmounted["containers"][0]["volumeMounts"] = json!([]);
        assert!(injection_problems(&unmounted, None)[0].contains("in no mounted token volume"));
    }

    #[test]
    fn templates_are_found_where_each_kind_keeps_them() {
        let cj = json!({"spec": {"jobTemplate": {"spec": {"template": {"spec": {"x": 1}}}}}});
        assert_eq!(
            template_of("CronJob", &cj),
            Some(&json!({"spec": {"x": 1}}))
        );
        assert_eq!(template_of("Deployment", &cj), None);
        assert_eq!(template_kind("Job"), TemplateKind::NotInPlace);
        assert_eq!(template_kind("DaemonSet"), TemplateKind::Rollout);
    }

    #[test]
    fn a_restore_patch_gives_back_the_recorded_template_exactly() {
        fn apply(target: &mut Value, patch: &Value) {
            match (target.as_object_mut(), patch.as_object()) {
                (Some(t), Some(p)) => {
                    for (k, v) in p {
                        if v.is_null() {
                            t.remove(k);
                        } else {
                            apply(t.entry(k.clone()).or_insert(Value::Null), v);
                        }
                    }
                }
                _ => *target = patch.clone(),
            }
        }
        let recorded = json!({"metadata": {"labels": {"app": "web", "aadpodidbinding": "web"}},
            "spec": {"containers": [{"name": "c", "env": [{"name": "A", "value": "1"}]}]}});
        let mut now = recorded.clone();
        apply(
            &mut now,
            &TemplateChange::for_template(&recorded, "web").template_patch(),
        );
        now["spec"]["containers"][0]["env"] = json!([]);
        assert_ne!(now, recorded);
        let patch = restore_patch("Deployment", &now, &recorded).unwrap();
        let mut obj = json!({"spec": {"template": now}});
        apply(&mut obj, &patch);
        assert_eq!(obj["spec"]["template"], recorded);
        assert_eq!(restore_patch("Deployment", &recorded, &recorded), None);
    }
}
