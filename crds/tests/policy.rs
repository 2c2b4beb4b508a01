//! The matching rules of the original aad-pod-identity, one test per rule, on objects built in code.

use std::collections::BTreeMap;

use podid_crds::policy::{
    GrantSkip, IdentityRequest, MatchOptions, PodFacts, assigned_identity_name,
    assigned_identity_namespace, is_pod_excepted, is_valid_resource_id, matching_bindings,
    pod_identities, select_identity,
};
use podid_crds::provider::NodeResource;
use podid_crds::*;
use podid_testkit::builders::{self, binding, msi, pod_facts, rid};

fn namespaced(mut id: AzureIdentity) -> AzureIdentity {
    id.metadata.annotations = Some(BTreeMap::from([(
        BEHAVIOR_ANNOTATION.to_string(),
        BEHAVIOR_NAMESPACED.to_string(),
    )]));
    id
}

fn pod(ns: &str, name: &str, label: Option<&str>) -> PodFacts {
    pod_facts(ns, name, label, "node-0")
}

fn granted(
    p: &PodFacts,
    b: &[AzureIdentityBinding],
    i: &[AzureIdentity],
    o: MatchOptions,
) -> Vec<String> {
    pod_identities(p, b, i, o)
        .grants
        .iter()
        .map(|g| {
            format!(
                "{}/{}",
                g.identity.metadata.namespace.as_deref().unwrap(),
                g.identity.metadata.name.as_deref().unwrap()
            )
        })
        .collect()
}

#[test]
fn label_must_equal_selector_exactly() {
    let ids = [msi("default", "id1", "c1")];
    let bs = [binding("default", "b1", "id1", "demo")];
    let std = MatchOptions::standard(false);
    assert_eq!(
        granted(&pod("default", "p", Some("demo")), &bs, &ids, std),
        ["default/id1"]
    );
    assert!(
        granted(&pod("default", "p", Some("Demo")), &bs, &ids, std).is_empty(),
        "case-sensitive"
    );
    assert!(granted(&pod("default", "p", Some("demo2")), &bs, &ids, std).is_empty());
    assert!(granted(&pod("default", "p", None), &bs, &ids, std).is_empty());
}

#[test]
fn empty_label_or_empty_selector_never_matches() {
    let ids = [msi("default", "id1", "c1")];
    let bs = [binding("default", "b1", "id1", "")];
    assert!(
        granted(
            &pod("default", "p", Some("")),
            &bs,
            &ids,
            MatchOptions::standard(false)
        )
        .is_empty()
    );
    assert!(
        granted(
            &pod("default", "p", None),
            &bs,
            &ids,
            MatchOptions::managed()
        )
        .is_empty()
    );
}

#[test]
fn standard_mode_matches_bindings_in_other_namespaces() {
    let ids = [msi("identities", "id1", "c1")];
    let bs = [binding("identities", "b1", "id1", "demo")];
    assert_eq!(
        granted(
            &pod("apps", "p", Some("demo")),
            &bs,
            &ids,
            MatchOptions::standard(false)
        ),
        ["identities/id1"]
    );
}

#[test]
fn identity_is_looked_up_in_the_binding_namespace() {
    let ids = [msi("apps", "id1", "c1")];
    let bs = [binding("identities", "b1", "id1", "demo")];
    let out = pod_identities(
        &pod("apps", "p", Some("demo")),
        &bs,
        &ids,
        MatchOptions::standard(false),
    );
    assert!(out.grants.is_empty());
    assert_eq!(
        out.skipped[0].1,
        GrantSkip::IdentityMissing {
            identity: "id1".into()
        }
    );
}

#[test]
fn force_namespaced_requires_one_namespace() {
    let ids = [msi("identities", "id1", "c1"), msi("apps", "id2", "c2")];
    let bs = [
        binding("identities", "b1", "id1", "demo"),
        binding("apps", "b2", "id2", "demo"),
    ];
    let p = pod("apps", "p", Some("demo"));
    assert_eq!(
        granted(&p, &bs, &ids, MatchOptions::standard(true)),
        ["apps/id2"]
    );
    let out = pod_identities(&p, &bs, &ids, MatchOptions::standard(true));
    assert_eq!(
        out.skipped[0].1,
        GrantSkip::NamespaceMismatch {
            identity: "id1".into()
        }
    );
    assert_eq!(
        granted(&p, &bs, &ids, MatchOptions::standard(false)),
        ["apps/id2", "identities/id1"]
    );
}

#[test]
fn namespaced_annotation_applies_per_identity() {
    let ids = [
        namespaced(msi("identities", "id1", "c1")),
        msi("identities", "id2", "c2"),
    ];
    let bs = [
        binding("identities", "b1", "id1", "demo"),
        binding("identities", "b2", "id2", "demo"),
    ];
    let p = pod("apps", "p", Some("demo"));
    assert_eq!(
        granted(&p, &bs, &ids, MatchOptions::standard(false)),
        ["identities/id2"]
    );
    let same_ns = pod("identities", "p", Some("demo"));
    assert_eq!(
        granted(&same_ns, &bs, &ids, MatchOptions::standard(false)),
        ["identities/id1", "identities/id2"]
    );
}

#[test]
fn managed_mode_only_sees_the_pod_namespace() {
    let ids = [msi("identities", "id1", "c1"), msi("apps", "id2", "c2")];
    let bs = [
        binding("identities", "b1", "id1", "demo"),
        binding("apps", "b2", "id2", "demo"),
    ];
    let p = pod("apps", "p", Some("demo"));
    let m = matching_bindings(&p, &bs, MatchOptions::managed());
    assert_eq!(m.len(), 1);
    assert_eq!(
        granted(&p, &bs, &ids, MatchOptions::managed()),
        ["apps/id2"]
    );
}

#[test]
fn bindings_are_taken_in_namespace_then_name_order() {
    let ids = [
        msi("b", "x", "c1"),
        msi("a", "y", "c2"),
        msi("a", "z", "c3"),
    ];
    let bs = [
        binding("b", "b1", "x", "s"),
        binding("a", "b9", "z", "s"),
        binding("a", "b2", "y", "s"),
    ];
    assert_eq!(
        granted(
            &pod("a", "p", Some("s")),
            &bs,
            &ids,
            MatchOptions::standard(false)
        ),
        ["a/y", "a/z", "b/x"]
    );
}

#[test]
fn same_identity_name_in_two_namespaces_keeps_the_first() {
    let ids = [msi("a", "id", "c1"), msi("b", "id", "c2")];
    let bs = [binding("a", "b1", "id", "s"), binding("b", "b1", "id", "s")];
    let out = pod_identities(
        &pod("a", "p", Some("s")),
        &bs,
        &ids,
        MatchOptions::standard(false),
    );
    assert_eq!(out.grants.len(), 1);
    assert_eq!(out.grants[0].identity.spec.client_id, "c1");
    assert_eq!(
        out.skipped[0].1,
        GrantSkip::DuplicateIdentityName {
            identity: "id".into()
        }
    );
}

#[test]
fn binding_naming_no_identity_is_reported() {
    let bs = [binding("a", "b1", "", "s")];
    let out = pod_identities(
        &pod("a", "p", Some("s")),
        &bs,
        &[],
        MatchOptions::standard(false),
    );
    assert_eq!(out.skipped[0].1, GrantSkip::NoIdentityNamed);
}

#[test]
fn msi_with_invalid_resource_id_is_dropped() {
    let mut id = msi("a", "id", "c1");
    id.spec.resource_id = "not-an-arm-id".into();
    let ids = [id];
    let bs = [binding("a", "b1", "id", "s")];
    let out = pod_identities(
        &pod("a", "p", Some("s")),
        &bs,
        &ids,
        MatchOptions::standard(false),
    );
    assert!(out.grants.is_empty());
    assert_eq!(
        out.skipped[0].1,
        GrantSkip::InvalidResourceId {
            identity: "id".into()
        }
    );
}

#[test]
fn service_principal_needs_no_resource_id() {
    let mut id = msi("a", "sp", "c1");
    id.spec.type_ = IdentityType::ServicePrincipal;
    id.spec.resource_id.clear();
    let ids = [id];
    let bs = [binding("a", "b1", "sp", "s")];
    assert_eq!(
        granted(
            &pod("a", "p", Some("s")),
            &bs,
            &ids,
            MatchOptions::standard(false)
        ),
        ["a/sp"]
    );
}

#[test]
fn resource_id_shape_is_checked_case_insensitively() {
    assert!(is_valid_resource_id(&rid("x")));
    assert!(is_valid_resource_id(
        "/SUBSCRIPTIONS/s/resourceGroups/rg/providers/microsoft.managedidentity/USERASSIGNEDIDENTITIES/x"
    ));
    assert!(!is_valid_resource_id(
        "/subscriptions/s/resourcegroups/rg/providers/Microsoft.Compute/virtualMachines/x"
    ));
    assert!(!is_valid_resource_id(
        "/subscriptions//resourcegroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/x"
    ));
    assert!(!is_valid_resource_id(&format!("{}/extra", rid("x"))));
    assert!(!is_valid_resource_id(""));
}

fn exception(ns: &str, labels: &[(&str, &str)]) -> AzurePodIdentityException {
    builders::exception(ns, "ex", labels)
}

#[test]
fn exception_matches_any_label_pair_value_case_insensitive() {
    let ex = [exception(
        "kube-system",
        &[("app", "mic"), ("component", "MIC")],
    )];
    let mut p = pod("kube-system", "p", None);
    assert!(!is_pod_excepted(&p, &ex));
    p.labels.insert("component".into(), "mic".into());
    assert!(
        is_pod_excepted(&p, &ex),
        "one pair is enough, value case-insensitive"
    );
    p.labels.clear();
    p.labels.insert("COMPONENT".into(), "mic".into());
    assert!(!is_pod_excepted(&p, &ex), "keys are case-sensitive");
}

#[test]
fn exception_only_applies_in_its_namespace() {
    let ex = [exception(
        "kube-system",
        &[("kubernetes.azure.com/managedby", "aks")],
    )];
    let mut p = pod("default", "p", None);
    p.labels
        .insert("kubernetes.azure.com/managedby".into(), "aks".into());
    assert!(!is_pod_excepted(&p, &ex));
    p.namespace = "kube-system".into();
    assert!(is_pod_excepted(&p, &ex));
}

#[test]
fn assigned_identity_naming_and_namespace() {
    assert_eq!(
        assigned_identity_name("web-1", "apps", "id1"),
        "web-1-apps-id1"
    );
    let plain = msi("identities", "id1", "c1");
    assert_eq!(assigned_identity_namespace(&plain, false), "default");
    assert_eq!(assigned_identity_namespace(&plain, true), "identities");
    assert_eq!(
        assigned_identity_namespace(&namespaced(plain), false),
        "identities"
    );
}

#[test]
fn selection_by_client_id_resource_id_case_insensitive() {
    let a = msi("a", "a", "AAAA-1111");
    let b = msi("a", "b", "bbbb-2222");
    let allowed = [&a, &b];
    let by_client = IdentityRequest {
        client_id: Some("aaaa-1111".into()),
        ..Default::default()
    };
    assert_eq!(
        select_identity(&by_client, &allowed)
            .unwrap()
            .spec
            .client_id,
        "AAAA-1111"
    );
    let by_rid = IdentityRequest {
        resource_id: Some(rid("b").to_uppercase()),
        ..Default::default()
    };
    assert_eq!(
        select_identity(&by_rid, &allowed).unwrap().spec.client_id,
        "bbbb-2222"
    );
}

#[test]
fn selection_of_an_unbound_identity_is_refused() {
    let a = msi("a", "a", "c1");
    let req = IdentityRequest {
        client_id: Some("someone-else".into()),
        ..Default::default()
    };
    assert!(matches!(
        select_identity(&req, &[&a]),
        Err(Error::IdentityNotBound)
    ));
    let by_oid = IdentityRequest {
        object_id: Some("oid".into()),
        ..Default::default()
    };
    assert!(matches!(
        select_identity(&by_oid, &[&a]),
        Err(Error::IdentityNotBound)
    ));
}

#[test]
fn unspecified_request_needs_exactly_one_identity() {
    let a = msi("a", "a", "c1");
    let b = msi("a", "b", "c2");
    let req = IdentityRequest::default();
    assert_eq!(select_identity(&req, &[&a]).unwrap().spec.client_id, "c1");
    assert!(matches!(select_identity(&req, &[]), Err(Error::NoIdentity)));
    let err = select_identity(&req, &[&a, &b]).unwrap_err();
    assert!(err.to_string().contains("name one with client_id"), "{err}");
}

#[test]
fn provider_ids_of_scale_sets_and_vms() {
    let vmss = NodeResource::parse(
        "azure:///subscriptions/sub/resourceGroups/MC_rg/providers/Microsoft.Compute/virtualMachineScaleSets/aks-nodepool1-123-vmss/virtualMachines/3",
    )
    .unwrap();
    let t = vmss.target();
    assert!(t.is_scale_set);
    assert_eq!(t.name, "aks-nodepool1-123-vmss");
    assert_eq!(
        t.arm_id(),
        "/subscriptions/sub/resourceGroups/MC_rg/providers/Microsoft.Compute/virtualMachineScaleSets/aks-nodepool1-123-vmss"
    );
    let vm = NodeResource::parse(
        "azure:///subscriptions/sub/resourcegroups/rg/providers/microsoft.compute/virtualmachines/aks-agent-0",
    )
    .unwrap();
    assert!(!vm.target().is_scale_set);
    assert_eq!(vm.target().name, "aks-agent-0");
    assert_eq!(
        NodeResource::parse("kind://docker/kind/kind-control-plane"),
        None
    );
    assert_eq!(NodeResource::parse(""), None);
}

#[test]
fn assignment_targets_round_trip_through_their_arm_id() {
    for pid in [
        "azure:///subscriptions/sub/resourceGroups/MC_rg/providers/Microsoft.Compute/virtualMachineScaleSets/aks-np-vmss/virtualMachines/3",
        "azure:///subscriptions/sub/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/aks-agent-0",
    ] {
        let t = NodeResource::parse(pid).unwrap().target();
        assert_eq!(
            podid_crds::provider::AssignmentTarget::from_arm_id(&t.arm_id()),
            Some(t)
        );
    }
    let lower = podid_crds::provider::AssignmentTarget::from_arm_id(
        "/subscriptions/sub/resourcegroups/rg/providers/microsoft.compute/virtualmachinescalesets/Pool",
    )
    .unwrap();
    assert!(lower.is_scale_set);
    assert_eq!(lower.name, "Pool");
    for bad in [
        "",
        "/subscriptions/sub/resourceGroups/rg/providers/Microsoft.Network/virtualNetworks/v",
        "/subscriptions/sub/resourceGroups/rg/providers/Microsoft.Compute/virtualMachineScaleSets/p/virtualMachines/0",
    ] {
        assert_eq!(
            podid_crds::provider::AssignmentTarget::from_arm_id(bad),
            None,
            "{bad}"
        );
    }
}

#[test]
fn tolerant_reads_of_odd_stored_objects() {
    let id: AzureIdentity = serde_json::from_value(serde_json::json!({
        "apiVersion": "aadpodidentity.k8s.io/v1", "kind": "AzureIdentity",
        "metadata": {"name": "x", "namespace": "default"},
        "spec": {"type": 7}
    }))
    .unwrap();
    assert_eq!(id.spec.type_, IdentityType::Unknown(7));
    let aai: AzureAssignedIdentity = serde_json::from_value(serde_json::json!({
        "apiVersion": "aadpodidentity.k8s.io/v1", "kind": "AzureAssignedIdentity",
        "metadata": {"name": "x", "namespace": "default"},
        "spec": {"pod": "p", "podNamespace": "ns", "nodename": "n"},
        "status": {"status": ""}
    }))
    .unwrap();
    assert_eq!(aai.status.unwrap().status, AssignedIdentityState::Legacy);
    let round = serde_json::to_value(IdentityType::ServicePrincipalCertificate).unwrap();
    assert_eq!(round, serde_json::json!(2));
}

#[test]
fn fixtures_parse_into_the_types() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures");
    let read = |f: &str| std::fs::read_to_string(format!("{dir}/{f}")).unwrap();
    let id: AzureIdentity = serde_yaml::from_str(&read("azureidentity-msi.yaml")).unwrap();
    assert_eq!(id.spec.type_, IdentityType::UserAssignedMsi);
    assert!(is_valid_resource_id(&id.spec.resource_id));
    let sp_doc = read("azureidentity-sp.yaml");
    let sp: AzureIdentity = serde_yaml::from_str(sp_doc.split("---").nth(1).unwrap()).unwrap();
    assert_eq!(sp.spec.type_, IdentityType::ServicePrincipal);
    assert_eq!(
        sp.spec.client_password.unwrap().name.as_deref(),
        Some("demo-aad1-sp")
    );
    let b: AzureIdentityBinding = serde_yaml::from_str(&read("azureidentitybinding.yaml")).unwrap();
    assert_eq!(
        (b.spec.azure_identity.as_str(), b.spec.selector.as_str()),
        ("demo-aad1", "demo")
    );
    let ex: AzurePodIdentityException =
        serde_yaml::from_str(&read("aks-addon-exception.yaml")).unwrap();
    assert_eq!(ex.spec.pod_labels["kubernetes.azure.com/managedby"], "aks");
}

#[test]
fn generated_crds_match_the_committed_yaml() {
    let committed =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/crds.yaml")).unwrap();
    assert_eq!(
        committed,
        crds_yaml().unwrap(),
        "crds/crds.yaml is stale: cargo run -p podid-crds --bin crdgen > crds/crds.yaml"
    );
}

#[test]
fn crds_keep_the_original_names_and_no_assigned_identity_status_subresource() {
    let crds = all_crds();
    let names: Vec<_> = crds
        .iter()
        .map(|c| c.metadata.name.clone().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "azureidentities.aadpodidentity.k8s.io",
            "azureidentitybindings.aadpodidentity.k8s.io",
            "azureassignedidentities.aadpodidentity.k8s.io",
            "azurepodidentityexceptions.aadpodidentity.k8s.io",
            "workloadmigrations.podid.dev"
        ]
    );
    assert!(crds[2].spec.versions[0].subresources.is_none());
    assert!(crds.iter().all(|c| c.spec.scope == "Namespaced"));
}

#[test]
fn the_index_gives_the_same_answers_as_the_scan() {
    let ids = [
        msi("a", "id1", "c1"),
        namespaced(msi("b", "id2", "c2")),
        msi("b", "id1", "c3"),
    ];
    let bs = [
        binding("b", "b2", "id2", "s"),
        binding("a", "b1", "id1", "s"),
        binding("b", "b3", "id1", "s"),
        binding("a", "b4", "missing", "s"),
        binding("a", "b5", "", "t"),
    ];
    let index = podid_crds::index::IdentityIndex::from_objects(&bs, &ids, []);
    for p in [
        pod("a", "p", Some("s")),
        pod("b", "p", Some("s")),
        pod("a", "p", Some("t")),
        pod("a", "p", None),
    ] {
        for o in [
            MatchOptions::standard(false),
            MatchOptions::standard(true),
            MatchOptions::managed(),
        ] {
            let scan = pod_identities(&p, &bs, &ids, o);
            let fast = index.pod_identities(&p, o);
            let names = |x: &podid_crds::policy::PodIdentities| {
                (
                    x.grants
                        .iter()
                        .map(|g| {
                            (
                                g.binding.metadata.name.clone(),
                                g.identity.spec.client_id.clone(),
                            )
                        })
                        .collect::<Vec<_>>(),
                    x.skipped
                        .iter()
                        .map(|(b, s)| (b.metadata.name.clone(), s.clone()))
                        .collect::<Vec<_>>(),
                )
            };
            assert_eq!(names(&scan), names(&fast), "{p:?} {o:?}");
        }
    }
}
