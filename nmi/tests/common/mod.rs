//! Builders for test objects.
#![allow(dead_code)]

use std::net::IpAddr;

use podid_crds::{
    AssignedIdentityState, AzureAssignedIdentity, AzureAssignedIdentitySpec,
    AzureAssignedIdentityStatus, AzureIdentity, AzurePodIdentityException, EmbeddedIdentity,
};
use podid_nmi::view::PodInfo;
pub use podid_testkit::builders::{binding, meta, msi, rid};

pub fn pod(ns: &str, name: &str, label: Option<&str>, ip: &str) -> PodInfo {
    PodInfo {
        facts: podid_testkit::builders::pod_facts(ns, name, label, "node-1"),
        replica_set: None,
        ip: Some(ip.parse::<IpAddr>().unwrap()),
        active: true,
        host_network: false,
        terminating: false,
        ..Default::default()
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
    podid_testkit::builders::exception(ns, name, &[(key, value)])
}
