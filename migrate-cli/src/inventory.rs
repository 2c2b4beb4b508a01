//! What the report reads: every object that bears on a move to Workload ID, from snapshot files
//! (`kubectl get -o yaml|json` output, or `podid snapshot`) or from a live cluster.

use std::path::Path;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{Node, Pod, ServiceAccount};
use podid_crds::plan::{ClusterContext, WorkloadObjects};
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
    pub skipped_kinds: std::collections::BTreeMap<String, usize>,
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
                let items = match v.get("items") {
                    Some(serde_json::Value::Array(items)) => items.clone(),
                    Some(serde_json::Value::Null) | None => Vec::new(),
                    Some(_) => {
                        return Err(Error::Snapshot {
                            file: file.into(),
                            document: doc,
                            object: kind.into(),
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
            ("v1", "Pod") => self.pods.push(typed(v, file, doc, &what)?),
            ("v1", "ServiceAccount") => self.service_accounts.push(typed(v, file, doc, &what)?),
            ("v1", "Node") => self.nodes.push(typed(v, file, doc, &what)?),
            ("v1", "Secret") => {
                // Never kept, even if someone exported them.
                *self.skipped_kinds.entry("v1/Secret".into()).or_default() += 1;
            }
            ("apps", "Deployment") => self.deployments.push(typed(v, file, doc, &what)?),
            ("apps", "ReplicaSet") => self.replica_sets.push(typed(v, file, doc, &what)?),
            ("apps", "StatefulSet") => self.stateful_sets.push(typed(v, file, doc, &what)?),
            ("apps", "DaemonSet") => self.daemon_sets.push(typed(v, file, doc, &what)?),
            ("batch", "Job") => self.jobs.push(typed(v, file, doc, &what)?),
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
        self.pods.extend(other.pods);
        self.service_accounts.extend(other.service_accounts);
        self.deployments.extend(other.deployments);
        self.replica_sets.extend(other.replica_sets);
        self.stateful_sets.extend(other.stateful_sets);
        self.daemon_sets.extend(other.daemon_sets);
        self.jobs.extend(other.jobs);
        self.cron_jobs.extend(other.cron_jobs);
        self.identities.extend(other.identities);
        self.bindings.extend(other.bindings);
        self.assigned.extend(other.assigned);
        self.exceptions.extend(other.exceptions);
        self.webhooks.extend(other.webhooks);
        self.nodes.extend(other.nodes);
        for (k, n) in other.skipped_kinds {
            *self.skipped_kinds.entry(k).or_default() += n;
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
            let mut sections = vec![Inventory::default()];
            for (doc_no, v) in documents(&text, &file)? {
                if is_header(&v) && sections.last().is_some_and(|s| s.facts_recorded) {
                    sections.push(Inventory::default());
                }
                if let Some(s) = sections.last_mut() {
                    s.add(v, &file, doc_no)?;
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
        let mut inv = Inventory::default();
        for p in paths {
            let p = p.as_ref();
            let text = std::fs::read_to_string(p).map_err(|e| Error::Read {
                file: p.display().to_string(),
                source: e,
            })?;
            inv.add_text(&text, &p.display().to_string())?;
        }
        Ok(inv)
    }

    /// Writes the inventory as a snapshot: a header, then one List per kind. Secrets are never
    /// part of an inventory, so never part of a snapshot.
    pub fn to_snapshot_yaml(&self) -> Result<String, Error> {
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
