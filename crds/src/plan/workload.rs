//! Workloads as the plan sees them: pod templates of Deployments, StatefulSets, DaemonSets,
//! Jobs and CronJobs (so scaled-to-zero and idle workloads count), plus bare pods and pods of
//! owners podid does not know, each with the live pods that belong to it.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{Pod, PodSpec, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;
use serde::{Deserialize, Serialize};

use crate::names::DEFAULT_IDENTITY_ANNOTATION;

/// The objects workloads are read from, borrowed from wherever the caller keeps them (the CLI's
/// inventory, the operator's watch stores).
#[derive(Clone, Debug, Default)]
pub struct WorkloadObjects<'a> {
    pub pods: Vec<&'a Pod>,
    pub deployments: Vec<&'a Deployment>,
    pub stateful_sets: Vec<&'a StatefulSet>,
    pub daemon_sets: Vec<&'a DaemonSet>,
    pub jobs: Vec<&'a Job>,
    pub cron_jobs: Vec<&'a CronJob>,
    pub replica_sets: Vec<&'a ReplicaSet>,
    /// Further live pods known only by their controller (namespace, kind, name), counted: a
    /// reader may keep one pod of a controller whole (in `pods`) and only the number of the
    /// others, which the plan reads nothing else of.
    pub more_pods: Vec<(&'a ControllerKey, usize)>,
    /// ReplicaSets and Jobs known only by their controller: (namespace, kind, name) → the
    /// controller's (kind, name). The plan reads nothing else of a ReplicaSet a controller
    /// owns, nor of a Job a CronJob owns.
    pub owned: Vec<(&'a ControllerKey, &'a (String, String))>,
}

/// A pod's controller: namespace, kind and name.
pub type ControllerKey = (String, String, String);

/// A workload: one pod template and its live pods.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Workload {
    pub namespace: String,
    /// Deployment, StatefulSet, DaemonSet, Job, CronJob, ReplicaSet, Pod, or the kind of an
    /// owner podid does not know (reported, never fatal).
    pub kind: String,
    pub name: String,
    /// Labels of the pod template (or of the pod).
    pub labels: BTreeMap<String, String>,
    /// `spec.serviceAccountName`, `default` when unset.
    pub service_account: String,
    pub host_network: bool,
    /// Whether every container drops NET_RAW (or ALL).
    pub drops_net_raw: bool,
    /// Desired replicas where the kind has them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    /// Live pods that belong to this workload.
    pub live_pods: usize,
    /// True when the owner's kind is not one podid resolves.
    #[serde(default)]
    pub unsupported_owner: bool,
    /// The identity the team names as the default for the workload's ServiceAccount when it
    /// uses several (template annotation `podid.dev/default-identity`: a client ID or an
    /// AzureIdentity name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_identity: Option<String>,
}

fn from_spec(
    namespace: &str,
    kind: &str,
    name: &str,
    labels: BTreeMap<String, String>,
    annotations: Option<&BTreeMap<String, String>>,
    spec: Option<&PodSpec>,
    replicas: Option<i32>,
) -> Workload {
    let drops_net_raw = spec.is_some_and(|s| {
        s.containers.iter().all(|c| {
            c.security_context
                .as_ref()
                .and_then(|sc| sc.capabilities.as_ref())
                .and_then(|cap| cap.drop.as_ref())
                .is_some_and(|d| d.iter().any(|x| x == "NET_RAW" || x == "ALL"))
        })
    });
    Workload {
        namespace: namespace.into(),
        kind: kind.into(),
        name: name.into(),
        labels,
        service_account: spec
            .and_then(|s| s.service_account_name.clone())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "default".into()),
        host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
        drops_net_raw,
        replicas,
        live_pods: 0,
        unsupported_owner: false,
        default_identity: annotations
            .and_then(|a| a.get(DEFAULT_IDENTITY_ANNOTATION))
            .filter(|v| !v.is_empty())
            .cloned(),
    }
}

fn from_template(
    namespace: &str,
    kind: &str,
    name: &str,
    t: &PodTemplateSpec,
    replicas: Option<i32>,
) -> Workload {
    let labels = t
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let annotations = t.metadata.as_ref().and_then(|m| m.annotations.as_ref());
    from_spec(
        namespace,
        kind,
        name,
        labels,
        annotations,
        t.spec.as_ref(),
        replicas,
    )
}

/// The controller (kind, name) an object's owner references name, if any.
pub fn controller_of(meta: &ObjectMeta) -> Option<(&str, &str)> {
    meta.owner_references
        .as_ref()?
        .iter()
        .find(|r| r.controller == Some(true))
        .map(|r| (r.kind.as_str(), r.name.as_str()))
}

type Key = (String, String, String); // namespace, kind, name

/// All workloads of these objects, sorted by namespace, kind and name.
pub fn workloads(objs: &WorkloadObjects<'_>) -> Vec<Workload> {
    let mut out: BTreeMap<Key, Workload> = BTreeMap::new();
    let ns = |o: &dyn Fn() -> Option<String>| o().unwrap_or_default();
    for d in &objs.deployments {
        let n = ns(&|| d.namespace());
        if let Some(spec) = &d.spec {
            let w = from_template(
                &n,
                "Deployment",
                &d.name_any(),
                &spec.template,
                spec.replicas.or(Some(1)),
            );
            out.insert((n, "Deployment".into(), d.name_any()), w);
        }
    }
    for s in &objs.stateful_sets {
        let n = ns(&|| s.namespace());
        if let Some(spec) = &s.spec {
            let w = from_template(
                &n,
                "StatefulSet",
                &s.name_any(),
                &spec.template,
                spec.replicas.or(Some(1)),
            );
            out.insert((n, "StatefulSet".into(), s.name_any()), w);
        }
    }
    for d in &objs.daemon_sets {
        let n = ns(&|| d.namespace());
        if let Some(spec) = &d.spec {
            let w = from_template(&n, "DaemonSet", &d.name_any(), &spec.template, None);
            out.insert((n, "DaemonSet".into(), d.name_any()), w);
        }
    }
    for c in &objs.cron_jobs {
        let n = ns(&|| c.namespace());
        if let Some(t) = c.spec.as_ref().and_then(|s| s.job_template.spec.as_ref()) {
            let w = from_template(&n, "CronJob", &c.name_any(), &t.template, None);
            out.insert((n, "CronJob".into(), c.name_any()), w);
        }
    }
    for j in &objs.jobs {
        let n = ns(&|| j.namespace());
        if controller_of(&j.metadata).is_some_and(|(kind, _)| kind == "CronJob") {
            continue;
        }
        if let Some(spec) = &j.spec {
            let w = from_template(&n, "Job", &j.name_any(), &spec.template, None);
            out.insert((n, "Job".into(), j.name_any()), w);
        }
    }
    // ReplicaSet → its Deployment; Job → its CronJob.
    let mut parent: HashMap<(String, String, String), (String, String)> = HashMap::new();
    for rs in &objs.replica_sets {
        let n = ns(&|| rs.namespace());
        match controller_of(&rs.metadata) {
            Some((kind, name)) => {
                parent.insert(
                    (n, "ReplicaSet".into(), rs.name_any()),
                    (kind.to_owned(), name.to_owned()),
                );
            }
            None => {
                if let Some(spec) = &rs.spec
                    && let Some(t) = &spec.template
                {
                    let w = from_template(&n, "ReplicaSet", &rs.name_any(), t, spec.replicas);
                    out.insert((n, "ReplicaSet".into(), rs.name_any()), w);
                }
            }
        }
    }
    for j in &objs.jobs {
        if let Some((kind, name)) = controller_of(&j.metadata) {
            parent.insert(
                (ns(&|| j.namespace()), "Job".into(), j.name_any()),
                (kind.to_owned(), name.to_owned()),
            );
        }
    }
    for (child, up) in &objs.owned {
        parent.insert((*child).clone(), (*up).clone());
    }
    for pod in &objs.pods {
        let n = ns(&|| pod.namespace());
        let key = owner_of(
            &pod.name_any(),
            controller_of(&pod.metadata),
            &n,
            &parent,
            &out,
        );
        let entry = out.entry(key.clone()).or_insert_with(|| {
            let mut w = from_spec(
                &n,
                &key.1,
                &key.2,
                pod.labels().clone(),
                Some(pod.annotations()),
                pod.spec.as_ref(),
                None,
            );
            w.unsupported_owner = !KNOWN.contains(&key.1.as_str());
            w
        });
        entry.live_pods += 1;
    }
    for ((n, kind, name), count) in &objs.more_pods {
        let key = owner_of("", Some((kind, name)), n, &parent, &out);
        let entry = out.entry(key.clone()).or_insert_with(|| {
            // Not expected (the pod kept whole named this workload first): a workload with
            // pods and no template read.
            let mut w = from_spec(n, &key.1, &key.2, BTreeMap::new(), None, None, None);
            w.unsupported_owner = !KNOWN.contains(&key.1.as_str());
            w
        });
        entry.live_pods += count;
    }
    out.into_values().collect()
}

const KNOWN: [&str; 7] = [
    "Deployment",
    "StatefulSet",
    "DaemonSet",
    "Job",
    "CronJob",
    "ReplicaSet",
    "Pod",
];

/// The top-most known owner of a pod: Pod → ReplicaSet → Deployment, Pod → Job → CronJob.
fn owner_of(
    pod_name: &str,
    pod_controller: Option<(&str, &str)>,
    ns: &str,
    parent: &HashMap<Key, (String, String)>,
    known: &BTreeMap<Key, Workload>,
) -> Key {
    let Some((kind, name)) = pod_controller else {
        return (ns.into(), "Pod".into(), pod_name.into());
    };
    let mut kind = kind.to_owned();
    let mut name = name.to_owned();
    while let Some((k, n)) = parent.get(&(ns.to_string(), kind.clone(), name.clone())) {
        kind = k.clone();
        name = n.clone();
    }
    // A ReplicaSet (or Job) absent from the input: its Deployment (CronJob) is named by the
    // prefix before the last dash, when such a workload is known.
    for (child, up) in [("ReplicaSet", "Deployment"), ("Job", "CronJob")] {
        if kind == child
            && !known.contains_key(&(ns.into(), kind.clone(), name.clone()))
            && let Some((prefix, _)) = name.rsplit_once('-')
            && known.contains_key(&(ns.into(), up.into(), prefix.into()))
        {
            return (ns.into(), up.into(), prefix.into());
        }
    }
    (ns.into(), kind, name)
}

/// The workloads a live pod may belong to, most likely first, from the pod alone (its
/// controller and its `pod-template-hash` label; no ReplicaSet or Job is read), as
/// (kind, name) pairs [`workloads`] would name them. The node agent uses it to find the pod's
/// WorkloadMigration; the record's own `spec.workload` then confirms the match.
///
/// A ReplicaSet named `<d>-<hash>` with the pod's `pod-template-hash` is most likely Deployment
/// `d`'s; a Job named `<c>-<digits>` may be CronJob `c`'s.
pub fn pod_workload_candidates(
    pod_name: &str,
    controller: Option<(&str, &str)>,
    pod_template_hash: Option<&str>,
) -> Vec<(String, String)> {
    let pair = |k: &str, n: &str| (k.to_owned(), n.to_owned());
    match controller {
        None => vec![pair("Pod", pod_name)],
        Some(("ReplicaSet", rs)) => {
            let deployment = pod_template_hash
                .filter(|h| !h.is_empty())
                .and_then(|h| rs.strip_suffix(h)?.strip_suffix('-'))
                .filter(|d| !d.is_empty());
            deployment
                .map(|d| pair("Deployment", d))
                .into_iter()
                .chain([pair("ReplicaSet", rs)])
                .collect()
        }
        Some(("Job", job)) => {
            let cron = job
                .rsplit_once('-')
                .filter(|(c, n)| {
                    !c.is_empty() && !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())
                })
                .map(|(c, _)| pair("CronJob", c));
            [pair("Job", job)].into_iter().chain(cron).collect()
        }
        Some((kind, name)) => vec![pair(kind, name)],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pod_names_its_likely_workloads() {
        let p = |k: &str, n: &str| (k.to_owned(), n.to_owned());
        assert_eq!(
            pod_workload_candidates(
                "web-5d9f-abcde",
                Some(("ReplicaSet", "web-5d9f")),
                Some("5d9f")
            ),
            vec![p("Deployment", "web"), p("ReplicaSet", "web-5d9f")]
        );
        assert_eq!(
            pod_workload_candidates("rs-x", Some(("ReplicaSet", "rs")), None),
            vec![p("ReplicaSet", "rs")]
        );
        assert_eq!(
            pod_workload_candidates(
                "nightly-29012345-q",
                Some(("Job", "nightly-29012345")),
                None
            ),
            vec![p("Job", "nightly-29012345"), p("CronJob", "nightly")]
        );
        assert_eq!(
            pod_workload_candidates("db-0", Some(("StatefulSet", "db")), None),
            vec![p("StatefulSet", "db")]
        );
        assert_eq!(
            pod_workload_candidates("bare", None, None),
            vec![p("Pod", "bare")]
        );
    }

    /// The objects of a multi-document YAML text (Deployments, DaemonSets and Pods).
    #[derive(Default)]
    struct Objects {
        pods: Vec<Pod>,
        deployments: Vec<Deployment>,
        daemon_sets: Vec<DaemonSet>,
    }

    impl Objects {
        fn workloads(&self) -> Vec<Workload> {
            workloads(&WorkloadObjects {
                pods: self.pods.iter().collect(),
                deployments: self.deployments.iter().collect(),
                daemon_sets: self.daemon_sets.iter().collect(),
                ..Default::default()
            })
        }
    }

    fn inv(yaml: &str) -> Objects {
        let mut objs = Objects::default();
        for doc in serde_yaml::Deserializer::from_str(yaml) {
            let v = serde_yaml::Value::deserialize(doc).unwrap();
            match v["kind"].as_str().unwrap() {
                "Pod" => objs.pods.push(serde_yaml::from_value(v).unwrap()),
                "Deployment" => objs.deployments.push(serde_yaml::from_value(v).unwrap()),
                "DaemonSet" => objs.daemon_sets.push(serde_yaml::from_value(v).unwrap()),
                k => panic!("unexpected kind {k}"),
            }
        }
        objs
    }

    const POD_OF_MISSING_RS: &str = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: a}\nspec:\n  replicas: 0\n  selector: {matchLabels: {app: web}}\n  template: {metadata: {labels: {app: web}}, spec: {containers: [{name: c}]}}\n---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: web-5d4f-x\n  namespace: a\n  ownerReferences: [{apiVersion: apps/v1, kind: ReplicaSet, name: web-5d4f, uid: u, controller: true}]\nspec: {containers: [{name: c}]}\n";

    #[test]
    fn a_pod_of_an_unlisted_replicaset_rolls_up_by_name() {
        let w = inv(POD_OF_MISSING_RS).workloads();
        assert_eq!(w.len(), 1);
        assert_eq!((w[0].kind.as_str(), w[0].live_pods), ("Deployment", 1));
        assert_eq!(w[0].replicas, Some(0));
    }

    #[test]
    fn template_facts_service_account_host_network_and_net_raw() {
        let w = inv(
            "apiVersion: apps/v1\nkind: DaemonSet\nmetadata: {name: agent, namespace: a}\nspec:\n  selector: {matchLabels: {app: agent}}\n  template:\n    metadata: {labels: {app: agent}}\n    spec:\n      serviceAccountName: agent\n      hostNetwork: true\n      containers:\n      - {name: c, securityContext: {capabilities: {drop: [ALL]}}}\n      - {name: d, securityContext: {capabilities: {drop: [NET_RAW]}}}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: bare, namespace: a}\nspec: {serviceAccountName: '', containers: [{name: c}]}\n",
        )
        .workloads();
        let agent = w.iter().find(|w| w.name == "agent").unwrap();
        assert!(agent.host_network && agent.drops_net_raw);
        assert_eq!(agent.service_account, "agent");
        let bare = w.iter().find(|w| w.name == "bare").unwrap();
        assert_eq!(
            (bare.kind.as_str(), bare.service_account.as_str()),
            ("Pod", "default")
        );
        assert!(!bare.drops_net_raw && !bare.unsupported_owner);
    }
}
