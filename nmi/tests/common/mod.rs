//! Builders for test objects.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::IpAddr;

use kube::api::ObjectMeta;
use podid_crds::policy::PodFacts;
use podid_crds::{
    AssignedIdentityState, AzureAssignedIdentity, AzureAssignedIdentitySpec,
    AzureAssignedIdentityStatus, AzureIdentity, AzureIdentityBinding, AzureIdentityBindingSpec,
    AzureIdentitySpec, AzurePodIdentityException, AzurePodIdentityExceptionSpec, EmbeddedIdentity,
    IdentityType,
};
use podid_nmi::view::PodInfo;

pub fn meta(ns: &str, name: &str) -> ObjectMeta {
    ObjectMeta {
        namespace: Some(ns.into()),
        name: Some(name.into()),
        ..Default::default()
    }
}

pub fn rid(name: &str) -> String {
    format!(
        "/subscriptions/sub/resourcegroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/{name}"
    )
}

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

pub fn pod(ns: &str, name: &str, label: Option<&str>, ip: &str) -> PodInfo {
    let mut labels = BTreeMap::new();
    if let Some(l) = label {
        labels.insert("aadpodidbinding".to_owned(), l.to_owned());
    }
    PodInfo {
        facts: PodFacts {
            namespace: ns.into(),
            name: name.into(),
            labels,
            node_name: "node-1".into(),
        },
        replica_set: None,
        ip: Some(ip.parse::<IpAddr>().unwrap()),
        active: true,
        host_network: false,
        terminating: false,
    }
}

pub fn assigned(
    pod: &PodInfo,
    identity: &AzureIdentity,
    state: AssignedIdentityState,
) -> AzureAssignedIdentity {
    AzureAssignedIdentity {
        metadata: meta(
            "default",
            &format!(
                "{}-{}",
                pod.facts.name,
                identity.metadata.name.as_deref().unwrap()
            ),
        ),
        spec: AzureAssignedIdentitySpec {
            azure_identity_ref: Some(EmbeddedIdentity::from(identity)),
            pod: pod.facts.name.clone(),
            pod_namespace: pod.facts.namespace.clone(),
            node_name: "node-1".into(),
            ..Default::default()
        },
        status: Some(AzureAssignedIdentityStatus {
            status: state,
            ..Default::default()
        }),
    }
}

pub fn exception(ns: &str, name: &str, key: &str, value: &str) -> AzurePodIdentityException {
    AzurePodIdentityException {
        metadata: meta(ns, name),
        spec: AzurePodIdentityExceptionSpec {
            pod_labels: [(key.to_owned(), value.to_owned())].into(),
            ..Default::default()
        },
        status: None,
    }
}
