//! What the report reads: every object that bears on a move to Workload ID, from snapshot files
//! (`kubectl get -o yaml|json` output, or `podid snapshot`) or from a live cluster.

use std::collections::BTreeMap;
use std::path::Path;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{Node, Pod, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use podid_crds::plan::{ClusterContext, ControllerKey, WorkloadObjects, controller_of};
use podid_crds::policy::MatchOptions;
use podid_crds::{
    AzureAssignedIdentity, AzureIdentity, AzureIdentityBinding, AzurePodIdentityException,
};
use serde::{Deserialize, Serialize};

use crate::Error;

/// API version and kind of the snapshot header document.
pub const SNAPSHOT_API_VERSION: &str = "podid.dev/v1alpha1";
pub const SNAPSHOT_KIND: &str = "ClusterSnapshot";

/// Cluster-wide facts a snapshot records in its header (a live scan discovers them).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterFacts {
    /// Name of the cluster or kubeconfig context the data came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The ServiceAccount token issuer (AKS: `oidcIssuerProfile.issuerUrl`); absent when the
    /// cluster has no OIDC issuer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oidc_issuer: Option<String>,
    /// `kubenet`, `azure`, … when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_plugin: Option<String>,
    /// When the data was read (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub captured_at: Option<String>,
}

/// Every object the report looks at.
#[derive(Clone, Debug, Default)]
pub struct Inventory {
    pub cluster: ClusterFacts,
    pub pods: Vec<Pod>,
    pub service_accounts: Vec<ServiceAccount>,
    pub deployments: Vec<Deployment>,
    pub replica_sets: Vec<ReplicaSet>,
    pub stateful_sets: Vec<StatefulSet>,
    pub daemon_sets: Vec<DaemonSet>,
    pub jobs: Vec<Job>,
    pub cron_jobs: Vec<CronJob>,
    pub identities: Vec<AzureIdentity>,
    pub bindings: Vec<AzureIdentityBinding>,
    pub assigned: Vec<AzureAssignedIdentity>,
    pub exceptions: Vec<AzurePodIdentityException>,
    pub webhooks: Vec<MutatingWebhookConfiguration>,
    pub nodes: Vec<Node>,
    /// Kinds seen in input but not used (`apiVersion/kind` → count), reported as a note.
    pub skipped_kinds: BTreeMap<String, usize>,
    /// Pods read from files, per controller (namespace, kind, name) one of whose pods is kept
    /// whole in `pods`: how many more it has. The plan reads one pod per controller and only
    /// counts the others, so a file's pods are kept that way ([`Inventory::add`]); a live scan
    /// keeps every pod whole.
    pub more_pods: BTreeMap<ControllerKey, usize>,
    /// ReplicaSets (any controller) and Jobs (a CronJob's) read from files, known only by
    /// their controller: (namespace, kind, name) → the controller's (kind, name). The plan
    /// reads nothing else of them; a live scan keeps them whole.
    pub owned: BTreeMap<ControllerKey, (String, String)>,
    /// Objects read from text are kept only as far as the report reads them: pods once per
    /// controller (`more_pods`), owned ReplicaSets and Jobs by their controller (`owned`).
    /// Set by the report's readers ([`Inventory::clusters_from_files`],
    /// [`Inventory::from_files`]); such an inventory is not written as a snapshot.
    pub compact: bool,
    /// The cluster-wide facts were recorded (a snapshot header, or a live scan): without them
    /// (plain `kubectl get` output) the OIDC issuer is unknown rather than absent.
    pub facts_recorded: bool,
    /// A live scan could not read the API server's issuer discovery document (forbidden,
    /// unreachable): the issuer is unknown rather than absent.
    pub issuer_lookup_failed: bool,
}

fn typed<T: serde::de::DeserializeOwned>(
    v: serde_json::Value,
    file: &str,
    doc: usize,
    what: &str,
) -> Result<T, Error> {
    serde_path_to_error::deserialize(v).map_err(|e| Error::Snapshot {
        file: file.into(),
        document: doc,
        object: what.into(),
        field: e.path().to_string(),
        message: e.inner().to_string(),
    })
}

/// `ClusterContext::from_inventory`: the cluster context of an inventory (its recorded facts,
/// webhooks and nodes).
pub trait ContextFromInventory {
    fn from_inventory(inv: &Inventory, match_options: MatchOptions) -> Self;
}

impl ContextFromInventory for ClusterContext {
    fn from_inventory(inv: &Inventory, match_options: MatchOptions) -> Self {
        let mut ctx = ClusterContext::new(
            inv.cluster.oidc_issuer.as_deref(),
            inv.cluster.network_plugin.as_deref(),
            &inv.webhooks,
            &inv.nodes,
            match_options,
        );
        ctx.issuer_unknown =
            (!inv.facts_recorded || inv.issuer_lookup_failed) && inv.cluster.oidc_issuer.is_none();
        ctx
    }
}

/// `a` then `b`, moving `b` whole when `a` is empty (merging a file's objects into an empty
/// inventory copies nothing).
fn append<T>(a: &mut Vec<T>, b: Vec<T>) {
    if a.is_empty() {
        *a = b;
    } else {
        a.extend(b);
    }
}

/// Drops what nothing of podid reads from an object read from a file: its managed fields and
/// kubectl's copy of the last applied object, often most of its size.
fn shed(meta: &mut ObjectMeta) {
    meta.managed_fields = None;
    if let Some(a) = meta.annotations.as_mut() {
        a.remove(LAST_APPLIED_ANNOTATION);
    }
}

const LAST_APPLIED_ANNOTATION: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// True for a `podid snapshot` header document.
fn is_header(v: &serde_json::Value) -> bool {
    v.get("kind").and_then(|k| k.as_str()) == Some(SNAPSHOT_KIND)
        && v.get("apiVersion")
            .and_then(|a| a.as_str())
            .is_some_and(|a| a.split('/').next() == Some(SNAPSHOT_GROUP))
}

impl Inventory {
    /// The objects the plan reads workloads from ([`podid_crds::plan::workloads`]).
    pub fn workload_objects(&self) -> WorkloadObjects<'_> {
        WorkloadObjects {
            pods: self.pods.iter().collect(),
            deployments: self.deployments.iter().collect(),
            stateful_sets: self.stateful_sets.iter().collect(),
            daemon_sets: self.daemon_sets.iter().collect(),
            jobs: self.jobs.iter().collect(),
            cron_jobs: self.cron_jobs.iter().collect(),
            replica_sets: self.replica_sets.iter().collect(),
            more_pods: self
                .more_pods
                .iter()
                .filter(|(_, n)| **n > 0)
                .map(|(k, n)| (k, *n))
                .collect(),
            owned: self.owned.iter().collect(),
        }
    }

    /// Adds one object (any supported kind; other kinds are counted in `skipped_kinds`).
    fn add(&mut self, v: serde_json::Value, file: &str, doc: usize) -> Result<(), Error> {
        let api_version = v.get("apiVersion").and_then(|x| x.as_str()).unwrap_or("");
        let kind = v.get("kind").and_then(|x| x.as_str()).unwrap_or("");
        if kind.is_empty() || api_version.is_empty() {
            return Err(Error::Snapshot {
                file: file.into(),
                document: doc,
                object: "object".into(),
                field: if kind.is_empty() { "kind" } else { "apiVersion" }.into(),
                message: "missing: every object needs apiVersion and kind (as `kubectl get -o yaml` prints)".into(),
            });
        }
        let meta = v.get("metadata");
        let name = meta
            .and_then(|m| m.get("name"))
            .and_then(|x| x.as_str())
            .unwrap_or("?");
        let what = match meta
            .and_then(|m| m.get("namespace"))
            .and_then(|x| x.as_str())
        {
            Some(ns) => format!("{kind} {ns}/{name}"),
            None => format!("{kind} {name}"),
        };
        let group = api_version.split('/').next().unwrap_or("");
        match (group, kind) {
            (_, k) if k.ends_with("List") => {
                let kind = k.to_string();
                let mut v = v;
                let items = match v.get_mut("items").map(serde_json::Value::take) {
                    Some(serde_json::Value::Array(items)) => items,
                    Some(serde_json::Value::Null) | None => Vec::new(),
                    Some(_) => {
                        return Err(Error::Snapshot {
                            file: file.into(),
                            document: doc,
                            object: kind,
                            field: "items".into(),
                            message: "must be a list of objects".into(),
                        });
                    }
                };
                for item in items {
                    self.add(item, file, doc)?;
                }
            }
            (SNAPSHOT_GROUP, SNAPSHOT_KIND) => {
                let cluster: ClusterFacts = typed(
                    v.get("cluster").cloned().unwrap_or_default(),
                    file,
                    doc,
                    &what,
                )?;
                self.cluster = cluster;
                self.facts_recorded = true;
            }
            ("v1", "Pod") => {
                let mut pod: Pod = typed(v, file, doc, &what)?;
                if !self.compact || self.keep_whole(&mut pod) {
                    self.pods.push(pod)
                }
            }
            ("v1", "ServiceAccount") => self.service_accounts.push(typed(v, file, doc, &what)?),
            ("v1", "Node") => self.nodes.push(typed(v, file, doc, &what)?),
            ("v1", "Secret") => {
                // Never kept, even if someone exported them.
                *self.skipped_kinds.entry("v1/Secret".into()).or_default() += 1;
            }
            ("apps", "Deployment") => self.deployments.push(typed(v, file, doc, &what)?),
            ("apps", "ReplicaSet") => {
                let mut rs: ReplicaSet = typed(v, file, doc, &what)?;
                if !self.compact
                    || !self.known_by_controller(&mut rs.metadata, "ReplicaSet", |_| true)
                {
                    self.replica_sets.push(rs)
                }
            }
            ("apps", "StatefulSet") => self.stateful_sets.push(typed(v, file, doc, &what)?),
            ("apps", "DaemonSet") => self.daemon_sets.push(typed(v, file, doc, &what)?),
            ("batch", "Job") => {
                let mut job: Job = typed(v, file, doc, &what)?;
                if !self.compact
                    || !self.known_by_controller(&mut job.metadata, "Job", |kind| kind == "CronJob")
                {
                    self.jobs.push(job)
                }
            }
            ("batch", "CronJob") => self.cron_jobs.push(typed(v, file, doc, &what)?),
            ("aadpodidentity.k8s.io", "AzureIdentity") => {
                self.identities.push(typed(v, file, doc, &what)?)
            }
            ("aadpodidentity.k8s.io", "AzureIdentityBinding") => {
                self.bindings.push(typed(v, file, doc, &what)?)
            }
            ("aadpodidentity.k8s.io", "AzureAssignedIdentity") => {
                self.assigned.push(typed(v, file, doc, &what)?)
            }
            ("aadpodidentity.k8s.io", "AzurePodIdentityException") => {
                self.exceptions.push(typed(v, file, doc, &what)?)
            }
            ("admissionregistration.k8s.io", "MutatingWebhookConfiguration") => {
                self.webhooks.push(typed(v, file, doc, &what)?)
            }
            _ => {
                *self
                    .skipped_kinds
                    .entry(format!("{api_version}/{kind}"))
                    .or_default() += 1;
            }
        }
        Ok(())
    }

    /// Reads one snapshot text (YAML, multi-document YAML, or JSON). `file` names it in errors.
    pub fn add_text(&mut self, text: &str, file: &str) -> Result<(), Error> {
        let mut read = self.empty_like();
        if fast::each_document(text, file, self.compact, |_, doc| {
            match doc {
                fast::Doc::Object(v, doc_no) => read.add(v, file, doc_no)?,
                fast::Doc::List(items) => read.merge(*items),
            }
            Ok(())
        })
        .is_ok()
        {
            self.merge(read);
            return Ok(());
        }
        // The reader that names every error the same way, whatever the input.
        for (doc_no, v) in documents(text, file)? {
            self.add(v, file, doc_no)?;
        }
        Ok(())
    }

    /// Adds everything `other` holds; `other`'s recorded facts win when it has some.
    pub fn merge(&mut self, other: Inventory) {
        if other.facts_recorded {
            self.cluster = other.cluster;
            self.facts_recorded = true;
        }
        append(&mut self.pods, other.pods);
        append(&mut self.service_accounts, other.service_accounts);
        append(&mut self.deployments, other.deployments);
        append(&mut self.replica_sets, other.replica_sets);
        append(&mut self.stateful_sets, other.stateful_sets);
        append(&mut self.daemon_sets, other.daemon_sets);
        append(&mut self.jobs, other.jobs);
        append(&mut self.cron_jobs, other.cron_jobs);
        append(&mut self.identities, other.identities);
        append(&mut self.bindings, other.bindings);
        append(&mut self.assigned, other.assigned);
        append(&mut self.exceptions, other.exceptions);
        append(&mut self.webhooks, other.webhooks);
        append(&mut self.nodes, other.nodes);
        for (k, n) in other.skipped_kinds {
            *self.skipped_kinds.entry(k).or_default() += n;
        }
        self.owned.extend(other.owned);
        for (k, n) in other.more_pods {
            *self.more_pods.entry(k).or_default() += n;
        }
    }

    /// Records a ReplicaSet or Job read from a file in `owned` when a controller of a kind
    /// `by` accepts owns it (true: the object itself is not kept).
    fn known_by_controller(
        &mut self,
        meta: &mut ObjectMeta,
        kind: &str,
        by: impl Fn(&str) -> bool,
    ) -> bool {
        shed(meta);
        let Some((up_kind, up_name)) = controller_of(meta).filter(|(k, _)| by(k)) else {
            return false;
        };
        let up = (up_kind.to_owned(), up_name.to_owned());
        let child = (
            meta.namespace.clone().unwrap_or_default(),
            kind.to_owned(),
            meta.name.clone().unwrap_or_default(),
        );
        self.owned.insert(child, up);
        true
    }

    /// Whether to keep a pod read from a file: yes for the first pod of each controller and
    /// for pods without one (the plan takes a workload's template from one of its pods when
    /// the workload itself is not in the input); the others are only counted in `more_pods`.
    /// A 50,000-pod cluster's snapshot is mostly pods of a few thousand controllers.
    fn keep_whole(&mut self, pod: &mut Pod) -> bool {
        pod.status = None;
        shed(&mut pod.metadata);
        let Some((kind, name)) = controller_of(&pod.metadata) else {
            return true;
        };
        let key = (
            pod.metadata.namespace.clone().unwrap_or_default(),
            kind.to_owned(),
            name.to_owned(),
        );
        match self.more_pods.get_mut(&key) {
            Some(n) => {
                *n += 1;
                false
            }
            None => {
                self.more_pods.insert(key, 0);
                true
            }
        }
    }

    /// Reads snapshot files of one cluster or of several: each `ClusterSnapshot` header starts
    /// the objects of the cluster it names (documents before a file's first header belong to
    /// it), and headers naming the same cluster add up. Files without a header belong to the
    /// one cluster the others name (or form it); with several named clusters they are an error,
    /// as nothing says which cluster they came from. Clusters in order of first appearance.
    pub fn clusters_from_files(paths: &[impl AsRef<Path>]) -> Result<Vec<Self>, Error> {
        let mut clusters: Vec<Inventory> = Vec::new();
        let mut loose: Vec<(String, Inventory)> = Vec::new();
        for p in paths {
            let p = p.as_ref();
            let file = p.display().to_string();
            let text = std::fs::read_to_string(p).map_err(|e| Error::Read {
                file: file.clone(),
                source: e,
            })?;
            let mut sections = vec![Inventory::compact()];
            let fast_read = fast::each_document(&text, &file, true, |_, doc| {
                match doc {
                    fast::Doc::Object(v, doc_no) => {
                        if is_header(&v) && sections.last().is_some_and(|s| s.facts_recorded) {
                            sections.push(Inventory::compact());
                        }
                        if let Some(s) = sections.last_mut() {
                            s.add(v, &file, doc_no)?;
                        }
                    }
                    fast::Doc::List(items) => {
                        if let Some(s) = sections.last_mut() {
                            s.merge(*items);
                        }
                    }
                }
                Ok(())
            });
            if fast_read.is_err() {
                // The reader that names every error the same way, whatever the input.
                sections = vec![Inventory::compact()];
                for (doc_no, v) in documents(&text, &file)? {
                    if is_header(&v) && sections.last().is_some_and(|s| s.facts_recorded) {
                        sections.push(Inventory::compact());
                    }
                    if let Some(s) = sections.last_mut() {
                        s.add(v, &file, doc_no)?;
                    }
                }
            }
            for s in sections {
                if !s.facts_recorded {
                    loose.push((file.clone(), s));
                } else if let Some(c) = clusters
                    .iter_mut()
                    .find(|c| c.cluster.name == s.cluster.name)
                {
                    c.merge(s);
                } else {
                    clusters.push(s);
                }
            }
        }
        if clusters.len() > 1
            && let Some((file, _)) = loose.first()
        {
            let names: Vec<&str> = clusters
                .iter()
                .map(|c| c.cluster.name.as_deref().unwrap_or("(unnamed)"))
                .collect();
            return Err(Error::Snapshot {
                file: file.clone(),
                document: 1,
                object: "file".into(),
                field: "ClusterSnapshot".into(),
                message: format!(
                    "no header says which cluster these objects come from, and the files name several ({}): start the file with a ClusterSnapshot header naming its cluster",
                    names.join(", ")
                ),
            });
        }
        if clusters.is_empty() {
            clusters.push(Inventory::default());
        }
        for (_, s) in loose {
            clusters[0].merge(s);
        }
        for c in &mut clusters {
            c.shrink();
        }
        Ok(clusters)
    }
}

/// The documents of one snapshot text (YAML, multi-document YAML, or JSON), numbered from 1;
/// empty documents skipped.
fn documents(text: &str, file: &str) -> Result<Vec<(usize, serde_json::Value)>, Error> {
    let mut out = Vec::new();
    {
        for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
            let doc_no = i + 1;
            let v: serde_json::Value =
                serde::Deserialize::deserialize(doc).map_err(|e| Error::Snapshot {
                    file: file.into(),
                    document: doc_no,
                    object: "document".into(),
                    field: e
                        .location()
                        .map(|l| format!("line {} column {}", l.line(), l.column()))
                        .unwrap_or_default(),
                    message: e.to_string(),
                })?;
            match v {
                serde_json::Value::Null => continue,
                serde_json::Value::Object(_) => out.push((doc_no, v)),
                _ => {
                    return Err(Error::Snapshot {
                        file: file.into(),
                        document: doc_no,
                        object: "document".into(),
                        field: String::new(),
                        message: "expected a Kubernetes object or List".into(),
                    });
                }
            }
        }
    }
    Ok(out)
}

impl Inventory {
    /// Reads snapshot files into one inventory.
    pub fn from_files(paths: &[impl AsRef<Path>]) -> Result<Self, Error> {
        let mut inv = Inventory::compact();
        for p in paths {
            let p = p.as_ref();
            let text = std::fs::read_to_string(p).map_err(|e| Error::Read {
                file: p.display().to_string(),
                source: e,
            })?;
            inv.add_text(&text, &p.display().to_string())?;
        }
        inv.shrink();
        Ok(inv)
    }

    /// An empty inventory that keeps what it reads only as far as the report reads it.
    pub fn compact() -> Self {
        Inventory {
            compact: true,
            ..Default::default()
        }
    }

    fn empty_like(&self) -> Self {
        Inventory {
            compact: self.compact,
            ..Default::default()
        }
    }

    /// Gives back the room the lists grew into while reading (a pod is over 2 KiB even
    /// without its spec): the report then works with only what was read.
    fn shrink(&mut self) {
        self.pods.shrink_to_fit();
        self.service_accounts.shrink_to_fit();
        self.deployments.shrink_to_fit();
        self.replica_sets.shrink_to_fit();
        self.stateful_sets.shrink_to_fit();
        self.daemon_sets.shrink_to_fit();
        self.jobs.shrink_to_fit();
        self.cron_jobs.shrink_to_fit();
    }

    /// Writes the inventory as a snapshot: a header, then one List per kind. Secrets are never
    /// part of an inventory, so never part of a snapshot.
    pub fn to_snapshot_yaml(&self) -> Result<String, Error> {
        debug_assert!(!self.compact, "a compact inventory is not a whole snapshot");
        fn list<T: Serialize>(
            out: &mut String,
            api_version: &str,
            kind: &str,
            items: &[T],
        ) -> Result<(), Error> {
            if items.is_empty() {
                return Ok(());
            }
            let mut values = Vec::with_capacity(items.len());
            for item in items {
                let mut v = serde_json::to_value(item)?;
                if let Some(o) = v.as_object_mut() {
                    o.insert("apiVersion".into(), api_version.into());
                    o.insert("kind".into(), kind.into());
                    if let Some(m) = o.get_mut("metadata").and_then(|m| m.as_object_mut()) {
                        m.remove("managedFields");
                    }
                }
                values.push(v);
            }
            out.push_str("---\n");
            out.push_str(&serde_yaml::to_string(&serde_json::json!({
                "apiVersion": "v1", "kind": "List", "items": values
            }))?);
            Ok(())
        }
        let mut out =
            String::from("# podid cluster snapshot: `podid report --from-file <this file>`\n---\n");
        out.push_str(&serde_yaml::to_string(&serde_json::json!({
            "apiVersion": SNAPSHOT_API_VERSION,
            "kind": SNAPSHOT_KIND,
            "cluster": self.cluster,
        }))?);
        list(&mut out, "v1", "Node", &self.nodes)?;
        list(&mut out, "v1", "ServiceAccount", &self.service_accounts)?;
        list(&mut out, "v1", "Pod", &self.pods)?;
        list(&mut out, "apps/v1", "Deployment", &self.deployments)?;
        list(&mut out, "apps/v1", "ReplicaSet", &self.replica_sets)?;
        list(&mut out, "apps/v1", "StatefulSet", &self.stateful_sets)?;
        list(&mut out, "apps/v1", "DaemonSet", &self.daemon_sets)?;
        list(&mut out, "batch/v1", "Job", &self.jobs)?;
        list(&mut out, "batch/v1", "CronJob", &self.cron_jobs)?;
        let crd = "aadpodidentity.k8s.io/v1";
        list(&mut out, crd, "AzureIdentity", &self.identities)?;
        list(&mut out, crd, "AzureIdentityBinding", &self.bindings)?;
        list(&mut out, crd, "AzureAssignedIdentity", &self.assigned)?;
        list(&mut out, crd, "AzurePodIdentityException", &self.exceptions)?;
        list(
            &mut out,
            "admissionregistration.k8s.io/v1",
            "MutatingWebhookConfiguration",
            &self.webhooks,
        )?;
        Ok(out)
    }
}

const SNAPSHOT_GROUP: &str = "podid.dev";

/// The fast reader of snapshot text: JSON with the JSON parser, YAML one document at a time,
/// and the items of a List turned into typed objects one by one as they are read (never the
/// whole List as a tree). Any input it does not read cleanly (an error, an unusual shape) is
/// left to [`documents`], which reads everything and names errors the one way users see.
mod fast {
    use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
    use serde_json::Value;

    use super::Inventory;
    use crate::Error;

    /// One document: an object (with its number), or the objects of a List already read.
    pub enum Doc {
        Object(Value, usize),
        List(Box<Inventory>),
    }

    /// Why the fast reader gave up (the caller reads the text again with [`super::documents`]).
    #[derive(Debug)]
    pub struct GaveUp;

    impl From<Error> for GaveUp {
        fn from(_: Error) -> Self {
            GaveUp
        }
    }

    /// Calls `f` for every non-empty document of `text`, in order.
    pub fn each_document(
        text: &str,
        file: &str,
        compact: bool,
        mut f: impl FnMut(usize, Doc) -> Result<(), Error>,
    ) -> Result<(), GaveUp> {
        if text.trim_start().starts_with('{') {
            let mut de = serde_json::Deserializer::from_str(text);
            let doc = DocSeed {
                file,
                doc: 1,
                compact,
            }
            .deserialize(&mut de)
            .map_err(|_| GaveUp)?;
            de.end().map_err(|_| GaveUp)?;
            return match doc {
                Some(Some(d)) => Ok(f(1, d)?),
                Some(None) => Ok(()),
                None => Err(GaveUp),
            };
        }
        for (i, de) in serde_yaml::Deserializer::from_str(text).enumerate() {
            let doc_no = i + 1;
            let seed = DocSeed {
                file,
                doc: doc_no,
                compact,
            };
            match seed.deserialize(de).map_err(|_| GaveUp)? {
                Some(Some(d)) => f(doc_no, d)?,
                Some(None) => {}
                None => return Err(GaveUp),
            }
        }
        Ok(())
    }

    /// Reads one document: `Some(None)` when empty, `None` when the fast reader gives up.
    struct DocSeed<'a> {
        file: &'a str,
        doc: usize,
        compact: bool,
    }

    impl<'de> DeserializeSeed<'de> for DocSeed<'_> {
        type Value = Option<Option<Doc>>;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_any(self)
        }
    }

    impl<'de> Visitor<'de> for DocSeed<'_> {
        type Value = Option<Option<Doc>>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a Kubernetes object or List")
        }

        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(Some(None))
        }

        fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(Some(None))
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut fields = serde_json::Map::new();
            // A List's items are read as they come (kubectl prints `items` before `kind`);
            // whether the document is a List is known at its end.
            let mut items: Option<Option<Inventory>> = None;
            let mut usual = true;
            while let Some(key) = map.next_key::<String>()? {
                let known_not_list = fields
                    .get("kind")
                    .and_then(Value::as_str)
                    .is_some_and(|k| !k.ends_with("List"));
                if key == "items" && !known_not_list && items.is_none() {
                    items = Some(map.next_value_seed(ItemsSeed {
                        file: self.file,
                        doc: self.doc,
                        compact: self.compact,
                    })?);
                } else {
                    let v: Value = map.next_value()?;
                    if fields.insert(key, v).is_some() {
                        usual = false;
                    }
                }
            }
            if !usual {
                return Ok(None);
            }
            let Some(items) = items else {
                return Ok(Some(Some(Doc::Object(Value::Object(fields), self.doc))));
            };
            let text = |k: &str| fields.get(k).and_then(Value::as_str).unwrap_or("");
            if !text("apiVersion").is_empty() && text("kind").ends_with("List") {
                Ok(items.map(|inv| Some(Doc::List(Box::new(inv)))))
            } else {
                Ok(None)
            }
        }
    }

    /// Reads the items of a List into an inventory: `None` when one of them is in error.
    struct ItemsSeed<'a> {
        file: &'a str,
        doc: usize,
        compact: bool,
    }

    impl<'de> DeserializeSeed<'de> for ItemsSeed<'_> {
        type Value = Option<Inventory>;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_any(self)
        }
    }

    impl<'de> Visitor<'de> for ItemsSeed<'_> {
        type Value = Option<Inventory>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a list of objects")
        }

        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(Some(Inventory::default()))
        }

        fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(Some(Inventory::default()))
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut inv = Some(Inventory {
                compact: self.compact,
                ..Default::default()
            });
            while let Some(item) = seq.next_element::<Value>()? {
                if let Some(i) = inv.as_mut()
                    && i.add(item, self.file, self.doc).is_err()
                {
                    inv = None;
                }
            }
            Ok(inv)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_issuer_that_could_not_be_read_is_unknown_one_that_is_not_served_is_absent() {
        let live = |failed: bool| Inventory {
            facts_recorded: true,
            issuer_lookup_failed: failed,
            ..Default::default()
        };
        let ctx =
            |inv: &Inventory| ClusterContext::from_inventory(inv, MatchOptions::standard(false));
        assert!(ctx(&live(true)).issuer_unknown);
        assert!(!ctx(&live(false)).issuer_unknown);
        let mut given = live(true);
        given.cluster.oidc_issuer = Some("https://issuer.example".into());
        assert!(!ctx(&given).issuer_unknown, "--oidc-issuer wins");
    }

    #[test]
    fn lists_json_single_objects_and_headers() {
        let mut inv = Inventory::default();
        inv.add_text(
            r#"{"apiVersion":"v1","kind":"List","items":[
                {"apiVersion":"v1","kind":"ServiceAccount","metadata":{"name":"a","namespace":"x"}},
                {"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"d","namespace":"x"}}]}"#,
            "list.json",
        )
        .unwrap();
        inv.add_text(
            "---\napiVersion: podid.dev/v1alpha1\nkind: ClusterSnapshot\ncluster:\n  oidcIssuer: https://i/\n---\n---\napiVersion: v1\nkind: Secret\nmetadata: {name: s}\n---\napiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w}\n",
            "multi.yaml",
        )
        .unwrap();
        assert_eq!(inv.service_accounts.len(), 1);
        assert_eq!(inv.deployments.len(), 1);
        assert_eq!(inv.cluster.oidc_issuer.as_deref(), Some("https://i/"));
        assert_eq!(inv.skipped_kinds.get("v1/Secret"), Some(&1));
        assert_eq!(inv.skipped_kinds.get("example.com/v1/Widget"), Some(&1));
    }

    #[test]
    fn a_json_list_reads_as_the_same_objects_in_yaml_and_its_errors_read_the_same() {
        // kubectl prints `items` before `kind`.
        let json = r#"{"apiVersion":"v1","items":[
            {"apiVersion":"podid.dev/v1alpha1","kind":"ClusterSnapshot","cluster":{"oidcIssuer":"https://i/"}},
            {"apiVersion":"v1","kind":"Pod","metadata":{"name":"p","namespace":"a","labels":{"aadpodidbinding":"x"}},"spec":{"containers":[{"name":"c"}]}},
            {"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"c","namespace":"a"}}],
            "kind":"List","metadata":{"resourceVersion":""}}"#;
        let yaml = "apiVersion: podid.dev/v1alpha1\nkind: ClusterSnapshot\ncluster: {oidcIssuer: 'https://i/'}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: a, labels: {aadpodidbinding: x}}\nspec: {containers: [{name: c}]}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: c, namespace: a}\n";
        let (mut from_json, mut from_yaml) = (Inventory::default(), Inventory::default());
        from_json.add_text(json, "l.json").unwrap();
        from_yaml.add_text(yaml, "l.yaml").unwrap();
        assert_eq!(from_json.pods, from_yaml.pods);
        assert_eq!(from_json.pods.len(), 1);
        assert_eq!(from_json.cluster, from_yaml.cluster);
        assert!(from_json.facts_recorded);
        assert_eq!(from_json.skipped_kinds, from_yaml.skipped_kinds);
        // An object that is not a List keeps a field named `items` to itself.
        let mut other = Inventory::default();
        other
            .add_text(
                r#"{"apiVersion":"example.com/v1","items":[1],"kind":"Widget"}"#,
                "w.json",
            )
            .unwrap();
        assert_eq!(other.skipped_kinds.get("example.com/v1/Widget"), Some(&1));
        let e = Inventory::default()
            .add_text(&json.replace(r#"[{"name":"c"}]"#, r#""oops""#), "l.json")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("l.json: document 1 (Pod a/p): spec.containers: invalid type"),
            "{e}"
        );
    }

    #[test]
    fn errors_name_file_document_object_and_field() {
        let mut inv = Inventory::default();
        let e = inv
            .add_text(
                "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: a}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: web, namespace: shop}\nspec: {containers: oops}\n",
                "snap.yaml",
            )
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("snap.yaml: document 2 (Pod shop/web): spec.containers: invalid type"),
            "{e}"
        );
        let e = inv
            .add_text("kind: Pod\n", "k.yaml")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("k.yaml: document 1") && e.contains("apiVersion"),
            "{e}"
        );
        let e = inv
            .add_text("- 1\n- 2\n", "seq.yaml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("seq.yaml: document 1"), "{e}");
    }

    #[test]
    fn a_snapshot_reads_back_to_the_same_inventory() {
        let mut inv = Inventory::default();
        inv.cluster.oidc_issuer = Some("https://i/".into());
        inv.add_text(
            "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: a\n  namespace: x\n  managedFields: [{manager: kubectl}]\n",
            "in.yaml",
        )
        .unwrap();
        let text = inv.to_snapshot_yaml().unwrap();
        assert!(!text.contains("managedFields"));
        let mut back = Inventory::default();
        back.add_text(&text, "out.yaml").unwrap();
        assert_eq!(back.cluster, inv.cluster);
        assert_eq!(back.service_accounts.len(), 1);
    }
}
