//! Objects for tests, built in code: the pod identity custom resources with the fields a test
//! names (the rest default), and any Kubernetes object from its JSON.

use std::collections::BTreeMap;

use kube::api::ObjectMeta;
use podid_crds::policy::PodFacts;
use podid_crds::{
    AzureIdentity, AzureIdentityBinding, AzureIdentityBindingSpec, AzureIdentitySpec,
    AzurePodIdentityException, AzurePodIdentityExceptionSpec, IdentityType, POD_LABEL,
};

/// Any object from its JSON (e.g. `obj::<Pod>(json!({...}))`); panics when it does not parse.
pub fn obj<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
    serde_json::from_value(v).expect("valid object")
}

/// Metadata naming `ns/name`.
pub fn meta(ns: &str, name: &str) -> ObjectMeta {
    ObjectMeta {
        namespace: Some(ns.into()),
        name: Some(name.into()),
        ..Default::default()
    }
}

/// The ARM id of user-assigned identity `name` (subscription `sub`, resource group `rg`).
pub fn rid(name: &str) -> String {
    format!(
        "/subscriptions/sub/resourcegroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/{name}"
    )
}

/// A user-assigned AzureIdentity `ns/name` with client id `client_id` and the ARM id [`rid`].
pub fn msi(ns: &str, name: &str, client_id: &str) -> AzureIdentity {
    AzureIdentity {
        metadata: meta(ns, name),
        spec: AzureIdentitySpec {
            type_: IdentityType::UserAssignedMsi,
            client_id: client_id.into(),
            resource_id: rid(name),
            ..Default::default()
        },
        status: None,
    }
}

/// An AzureIdentityBinding `ns/name` of AzureIdentity `identity` to pods labelled `selector`.
pub fn binding(ns: &str, name: &str, identity: &str, selector: &str) -> AzureIdentityBinding {
    AzureIdentityBinding {
        metadata: meta(ns, name),
        spec: AzureIdentityBindingSpec {
            azure_identity: identity.into(),
            selector: selector.into(),
            ..Default::default()
        },
        status: None,
    }
}

/// An AzurePodIdentityException `ns/name` for pods with any of the `labels`.
pub fn exception(ns: &str, name: &str, labels: &[(&str, &str)]) -> AzurePodIdentityException {
    AzurePodIdentityException {
        metadata: meta(ns, name),
        spec: AzurePodIdentityExceptionSpec {
            pod_labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        },
        status: None,
    }
}

/// Pod `ns/name` on `node`, labelled `aadpodidbinding=<label>` when a label is given.
pub fn pod_facts(ns: &str, name: &str, label: Option<&str>, node: &str) -> PodFacts {
    PodFacts {
        namespace: ns.into(),
        name: name.into(),
        labels: label
            .map(|l| BTreeMap::from([(POD_LABEL.to_string(), l.to_string())]))
            .unwrap_or_default(),
        node_name: node.into(),
    }
}

/// Every order of `items` (Heap's algorithm), for tests that check an outcome does not depend on
/// the order things arrive in; keep `items` small (n! orders).
pub fn permutations<T: Clone>(items: &[T]) -> Vec<Vec<T>> {
    fn go<T: Clone>(k: usize, a: &mut Vec<T>, out: &mut Vec<Vec<T>>) {
        if k <= 1 {
            out.push(a.clone());
            return;
        }
        for i in 0..k {
            go(k - 1, a, out);
            let j = if k.is_multiple_of(2) { i } else { 0 };
            a.swap(j, k - 1);
        }
    }
    let mut out = Vec::new();
    go(items.len(), &mut items.to_vec(), &mut out);
    out
}
