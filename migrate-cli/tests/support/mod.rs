//! Clusters built in code for the CLI's tests, its example generator
//! (`examples/write-example-snapshots.rs`) and its benchmark: the objects of a snapshot as
//! JSON, and the bundled example clusters ([`synth`]). Not part of the shipped `podid`.
#![allow(dead_code)]

pub mod synth;

use podid_cli::inventory::{ClusterFacts, Inventory};
use serde_json::{Value, json};

/// A user-assigned AzureIdentity `ns/name` whose identity lives in subscription `sub`,
/// resource group `rg`.
pub fn uami_in(sub: &str, rg: &str, ns: &str, name: &str, client_id: &str) -> Value {
    json!({"apiVersion": "aadpodidentity.k8s.io/v1", "kind": "AzureIdentity",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"type": 0, "clientID": client_id,
                 "resourceID": format!("/subscriptions/{sub}/resourcegroups/{rg}/providers/Microsoft.ManagedIdentity/userAssignedIdentities/{name}")}})
}

/// An AzureIdentityBinding `ns/name` of `identity` to pods labelled `selector`.
pub fn binding(ns: &str, name: &str, identity: &str, selector: &str) -> Value {
    json!({"apiVersion": "aadpodidentity.k8s.io/v1", "kind": "AzureIdentityBinding",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"azureIdentity": identity, "selector": selector}})
}

/// A ServiceAccount `ns/name` with `annotations`.
pub fn sa(ns: &str, name: &str, annotations: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": {"name": name, "namespace": ns, "annotations": annotations}})
}

/// The snapshot of `objects` with the cluster-wide facts `cluster`.
pub fn inventory(objects: Vec<Value>, cluster: ClusterFacts) -> Inventory {
    let mut inv = Inventory::default();
    inv.add_text(
        &json!({"apiVersion": "v1", "kind": "List", "items": objects}).to_string(),
        "<generated>",
    )
    .expect("generated objects parse");
    inv.cluster = cluster;
    inv.facts_recorded = true;
    inv
}
