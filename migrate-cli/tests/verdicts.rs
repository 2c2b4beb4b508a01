//! One test per reason code: the verdict logic over small clusters built in code.

use podid_cli::inventory::{ClusterFacts, ContextFromInventory, Inventory};
use podid_cli::report::Report;
use podid_crds::plan::{Assessment, ClusterContext, Severity, Verdict};
use podid_crds::policy::MatchOptions;
use serde_json::{Value, json};

mod support;
use support::{binding, sa, uami_in};

const ISSUER: &str = "https://eastus.oic.prod-aks.azure.com/tenant/cluster/";

fn uami(ns: &str, name: &str, client_id: &str) -> Value {
    uami_in("s", "rg", ns, name, client_id)
}
fn deploy(ns: &str, name: &str, labels: Value, sa: Option<&str>) -> Value {
    let mut spec = json!({"containers": [{"name": "app", "image": "app:1"}]});
    if let Some(sa) = sa {
        spec["serviceAccountName"] = json!(sa);
    }
    json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": ns},
        "spec": {"replicas": 0, "selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": labels}, "spec": spec}}})
}
fn webhook() -> Value {
    json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": "azure-wi-webhook-mutating-webhook-configuration"},
        "webhooks": [{"name": "mutation.azure-workload-identity.io", "admissionReviewVersions": ["v1"], "sideEffects": "None",
                      "clientConfig": {"url": "https://127.0.0.1/mutate"}}]})
}

fn inventory(objects: Vec<Value>, issuer: Option<&str>) -> Inventory {
    support::inventory(
        objects,
        ClusterFacts {
            oidc_issuer: issuer.map(str::to_string),
            ..Default::default()
        },
    )
}

/// The plan of every workload, as the bridge and the cutover see it (cluster-wide codes
/// included).
fn assess(objects: Vec<Value>) -> Vec<Assessment> {
    let inv = inventory(objects, Some(ISSUER));
    let ctx = ClusterContext::from_inventory(&inv, MatchOptions::standard(false));
    podid_cli::report::assess(&inv, &ctx)
}

fn one(objects: Vec<Value>, name: &str) -> Assessment {
    assess(objects)
        .into_iter()
        .find(|a| a.workload.name == name)
        .expect("workload present")
}

fn codes(a: &Assessment, sev: Severity) -> Vec<String> {
    a.findings
        .iter()
        .filter(|f| f.severity == sev)
        .map(|f| f.code.to_string())
        .collect()
}

/// A workload that is fully prepared: own SA annotated, credential recorded, label set.
fn prepared() -> Vec<Value> {
    vec![
        webhook(),
        uami("apps", "app-id", "C1"),
        binding("apps", "app-binding", "app-id", "app"),
        sa(
            "apps",
            "web",
            json!({"azure.workload.identity/client-id": "c1", "podid.dev/federated-credentials": "c1"}),
        ),
        deploy(
            "apps",
            "web",
            json!({"aadpodidbinding": "app", "azure.workload.identity/use": "true"}),
            Some("web"),
        ),
    ]
}

#[test]
fn ready_when_everything_is_in_place() {
    let a = one(prepared(), "web");
    assert_eq!(a.verdict, Verdict::Ready, "{:?}", a.findings);
    assert!(a.bridge.annotation_present && a.bridge.credential_ready && a.bridge.label_present);
}

#[test]
fn not_using_without_the_label() {
    let a = one(
        vec![
            webhook(),
            deploy("apps", "plain", json!({"app": "plain"}), None),
        ],
        "plain",
    );
    assert_eq!(a.verdict, Verdict::NotUsing);
    assert!(!a.uses_pod_identity);
}

#[test]
fn steps_federated_credential_annotation_and_label() {
    let mut objs = prepared();
    objs[3] = sa("apps", "web", json!({}));
    objs[4] = deploy(
        "apps",
        "web",
        json!({"aadpodidbinding": "app"}),
        Some("web"),
    );
    let a = one(objs, "web");
    assert_eq!(a.verdict, Verdict::NeedsChanges);
    assert_eq!(
        codes(&a, Severity::Step),
        [
            "federated-credential",
            "pod-label",
            "service-account-annotation"
        ]
    );
    let fic = a
        .findings
        .iter()
        .find(|f| f.code == "federated-credential")
        .unwrap();
    assert!(
        fic.message.contains("system:serviceaccount:apps:web"),
        "{}",
        fic.message
    );
}

#[test]
fn default_service_account_gets_a_dedicated_one() {
    let mut objs = prepared();
    objs[4] = deploy(
        "apps",
        "web",
        json!({"aadpodidbinding": "app", "azure.workload.identity/use": "true"}),
        None,
    );
    let a = one(objs, "web");
    assert_eq!(a.verdict, Verdict::NeedsChanges);
    assert!(codes(&a, Severity::Step).contains(&"default-service-account".to_string()));
    assert_eq!(a.target_service_account.as_deref(), Some("web"));
}

#[test]
fn webhook_not_installed_is_a_step() {
    let mut objs = prepared();
    objs.remove(0);
    let a = one(objs, "web");
    assert_eq!(a.verdict, Verdict::NeedsChanges);
    assert_eq!(codes(&a, Severity::Step), ["webhook-not-installed"]);
}

#[test]
fn webhook_not_installed_is_said_once_for_the_cluster() {
    let mut objs = prepared();
    objs.remove(0);
    let inv = inventory(objs, Some(ISSUER));
    let ctx = ClusterContext::from_inventory(&inv, MatchOptions::standard(false));
    let r = Report::build(&inv, &ctx, &[]);
    let cluster = r.cluster.as_ref().unwrap();
    assert_eq!(cluster.findings.len(), 1);
    assert_eq!(cluster.findings[0].code, "webhook-not-installed");
    assert_eq!(r.workloads[0].verdict, Verdict::Ready, "about the workload");
    assert!(r.workloads[0].findings.is_empty());
    assert!(!r.has_blocked());
}

#[test]
fn no_oidc_issuer_blocks() {
    let inv = inventory(prepared(), None);
    let ctx = ClusterContext::from_inventory(&inv, MatchOptions::standard(false));
    // The plan (the bridge's, the cutover's) blocks every workload.
    let plan = podid_cli::report::assess(&inv, &ctx);
    assert_eq!(plan[0].verdict, Verdict::Blocked);
    assert_eq!(codes(&plan[0], Severity::Blocker), ["no-oidc-issuer"]);
    // The report says it once, for the cluster, and keeps the workload's own verdict.
    let r = Report::build(&inv, &ctx, &[]);
    let cluster = r.cluster.as_ref().unwrap();
    assert_eq!(cluster.findings[0].code, "no-oidc-issuer");
    assert_eq!(cluster.findings[0].severity, Severity::Blocker);
    assert!(cluster.findings[0].message.contains("--oidc-issuer"));
    assert_eq!(r.workloads[0].verdict, Verdict::Ready);
    assert!(r.has_blocked(), "the cluster blocks the move: exit code 3");
}

#[test]
fn an_export_without_header_has_an_unknown_issuer_not_none() {
    let mut inv = inventory(prepared(), None);
    inv.facts_recorded = false;
    let ctx = ClusterContext::from_inventory(&inv, MatchOptions::standard(false));
    assert!(ctx.issuer_unknown);
    let plan = podid_cli::report::assess(&inv, &ctx);
    assert_eq!(
        plan[0].verdict,
        Verdict::Blocked,
        "nothing moves without one"
    );
    let r = Report::build(&inv, &ctx, &[]);
    let f = &r.cluster.as_ref().unwrap().findings;
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!(f[0].code, "oidc-issuer-unknown");
    assert_eq!(f[0].severity, Severity::Step);
    assert!(f[0].message.contains("--oidc-issuer"), "{}", f[0].message);
    assert_eq!(r.workloads[0].verdict, Verdict::Ready);
    assert!(!r.has_blocked());
}

#[test]
fn service_principal_identity_blocks() {
    let mut objs = prepared();
    objs[1] = json!({"apiVersion": "aadpodidentity.k8s.io/v1", "kind": "AzureIdentity",
        "metadata": {"name": "app-id", "namespace": "apps"},
        "spec": {"type": 1, "clientID": "C1", "tenantID": "t", "clientPassword": {"name": "s", "namespace": "apps"}}});
    let a = one(objs, "web");
    assert_eq!(a.verdict, Verdict::Blocked);
    assert_eq!(codes(&a, Severity::Blocker), ["service-principal-identity"]);
    assert_eq!(
        a.identities[0].type_, "service-principal",
        "reported, not dropped"
    );
}

#[test]
fn multiple_identities_are_a_step_not_a_blocker() {
    // The seed's documented pattern (apps pass client_id): one federated credential per identity
    // moves it, once the team confirms the app names its identity.
    let mut objs = prepared();
    objs.push(uami("apps", "second-id", "C2"));
    objs.push(binding("apps", "second-binding", "second-id", "app"));
    let a = one(objs, "web");
    assert!(codes(&a, Severity::Blocker).is_empty());
    assert!(codes(&a, Severity::Step).contains(&"multiple-identities".to_string()));
    assert_eq!(a.identities.len(), 2);
}

#[test]
fn shared_service_account_on_different_identities_moves_each_to_its_own() {
    let mut objs = prepared();
    objs.push(uami("apps", "other-id", "C2"));
    objs.push(binding("apps", "other-binding", "other-id", "other"));
    objs.push(deploy(
        "apps",
        "worker",
        json!({"aadpodidbinding": "other"}),
        Some("web"),
    ));
    let all = assess(objs);
    for name in ["web", "worker"] {
        let a = all.iter().find(|a| a.workload.name == name).unwrap();
        assert!(
            codes(a, Severity::Step).contains(&"shared-service-account".to_string()),
            "{name}"
        );
        assert!(codes(a, Severity::Blocker).is_empty(), "{name}");
        // Each gets a dedicated ServiceAccount named after it (and its own credential).
        assert_eq!(a.target_service_account.as_deref(), Some(name));
    }
}

#[test]
fn shared_service_account_on_the_same_identity_is_fine() {
    let mut objs = prepared();
    objs.push(deploy(
        "apps",
        "worker",
        json!({"aadpodidbinding": "app", "azure.workload.identity/use": "true"}),
        Some("web"),
    ));
    assert!(assess(objs).iter().all(|a| a.verdict == Verdict::Ready));
}

#[test]
fn more_than_twenty_subjects_per_identity_block() {
    let mut objs = vec![
        webhook(),
        uami("ids", "shared", "C9"),
        binding("ids", "b", "shared", "shared"),
    ];
    for i in 0..21 {
        objs.push(deploy(
            &format!("team-{i}"),
            "svc",
            json!({"aadpodidbinding": "shared"}),
            None,
        ));
    }
    let all = assess(objs.clone());
    assert!(
        all.iter()
            .all(|a| codes(a, Severity::Blocker) == ["federated-credential-limit"])
    );
    objs.pop();
    assert!(
        assess(objs)
            .iter()
            .all(|a| a.verdict == Verdict::NeedsChanges),
        "20 fit"
    );
}

#[test]
fn host_network_is_a_note() {
    let mut objs = prepared();
    objs[4]["spec"]["template"]["spec"]["hostNetwork"] = json!(true);
    let a = one(objs, "web");
    assert_eq!(a.verdict, Verdict::Ready);
    assert_eq!(codes(&a, Severity::Note), ["host-network"]);
}

#[test]
fn kubenet_without_dropping_net_raw_is_a_note() {
    let mut inv = inventory(prepared(), Some(ISSUER));
    inv.cluster.network_plugin = Some("kubenet".into());
    let ctx = ClusterContext::from_inventory(&inv, MatchOptions::standard(false));
    let a = &Report::build(&inv, &ctx, &[]).workloads[0];
    assert_eq!(codes(a, Severity::Note), ["kubenet-net-raw"]);
    let mut objs = prepared();
    objs[4]["spec"]["template"]["spec"]["containers"][0]["securityContext"] =
        json!({"capabilities": {"drop": ["NET_RAW"]}});
    let mut inv = inventory(objs, Some(ISSUER));
    inv.cluster.network_plugin = Some("kubenet".into());
    let ctx = ClusterContext::from_inventory(&inv, MatchOptions::standard(false));
    assert!(codes(&Report::build(&inv, &ctx, &[]).workloads[0], Severity::Note).is_empty());
}

#[test]
fn binding_without_identity_blocks() {
    let objs = vec![
        webhook(),
        binding("apps", "b", "", "app"),
        deploy(
            "apps",
            "web",
            json!({"aadpodidbinding": "app"}),
            Some("web"),
        ),
    ];
    assert_eq!(
        codes(&one(objs, "web"), Severity::Blocker),
        ["binding-without-identity"]
    );
}

#[test]
fn identity_missing_blocks() {
    let objs = vec![
        webhook(),
        binding("apps", "b", "gone", "app"),
        deploy(
            "apps",
            "web",
            json!({"aadpodidbinding": "app"}),
            Some("web"),
        ),
    ];
    assert_eq!(
        codes(&one(objs, "web"), Severity::Blocker),
        ["identity-missing"]
    );
}

#[test]
fn no_matching_binding_blocks() {
    let objs = vec![
        webhook(),
        deploy(
            "apps",
            "web",
            json!({"aadpodidbinding": "nothing"}),
            Some("web"),
        ),
    ];
    assert_eq!(
        codes(&one(objs, "web"), Severity::Blocker),
        ["no-matching-binding"]
    );
}

#[test]
fn namespace_mismatch_blocks() {
    let mut id = uami("ids", "ns-id", "C1");
    id["metadata"]["annotations"] = json!({"aadpodidentity.k8s.io/Behavior": "namespaced"});
    let objs = vec![
        webhook(),
        id,
        binding("ids", "b", "ns-id", "app"),
        deploy(
            "apps",
            "web",
            json!({"aadpodidbinding": "app"}),
            Some("web"),
        ),
    ];
    assert_eq!(
        codes(&one(objs, "web"), Severity::Blocker),
        ["namespace-mismatch"]
    );
}

#[test]
fn invalid_resource_id_blocks() {
    let mut id = uami("apps", "app-id", "C1");
    id["spec"]["resourceID"] =
        json!("/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm");
    let objs = vec![
        webhook(),
        id,
        binding("apps", "b", "app-id", "app"),
        deploy(
            "apps",
            "web",
            json!({"aadpodidbinding": "app"}),
            Some("web"),
        ),
    ];
    assert_eq!(
        codes(&one(objs, "web"), Severity::Blocker),
        ["invalid-resource-id"]
    );
}

#[test]
fn duplicate_identity_name_is_a_note_when_another_grant_exists() {
    let mut objs = prepared();
    objs.push(uami("other", "app-id", "C2"));
    objs.push(binding("other", "app-binding", "app-id", "app"));
    let a = one(objs, "web");
    assert_eq!(a.identities.len(), 1);
    assert_eq!(a.identities[0].client_id, "C1");
    assert_eq!(codes(&a, Severity::Note), ["duplicate-identity-name"]);
}

#[test]
fn a_reason_repeated_over_many_bindings_is_said_once() {
    let mut objs = prepared();
    for i in 0..24 {
        objs.push(binding("apps", &format!("dup-{i:02}"), "app-id", "app"));
    }
    let a = one(objs, "web");
    assert_eq!(codes(&a, Severity::Note), ["duplicate-identity-name"]);
    let note = a
        .findings
        .iter()
        .find(|f| f.code.as_str() == "duplicate-identity-name")
        .unwrap();
    assert!(
        note.message.contains("apps/dup-00") && note.message.contains("apps/dup-23"),
        "{}",
        note.message
    );
    assert_eq!(
        note.message
            .matches("pod identity keeps only the first")
            .count(),
        1,
        "said once, listing the bindings: {}",
        note.message
    );
    assert!(
        note.message.starts_with("24 bindings ("),
        "{}",
        note.message
    );
}

#[test]
fn exception_pod_with_the_label_blocks_and_without_is_a_note() {
    let ex = json!({"apiVersion": "aadpodidentity.k8s.io/v1", "kind": "AzurePodIdentityException",
        "metadata": {"name": "ex", "namespace": "apps"}, "spec": {"podLabels": {"app": "agent"}}});
    let mut objs = prepared();
    objs.push(ex.clone());
    objs.push(deploy(
        "apps",
        "agent",
        json!({"app": "agent", "aadpodidbinding": "app"}),
        Some("agent"),
    ));
    objs.push(deploy(
        "apps",
        "agent2",
        json!({"app": "AGENT"}),
        Some("agent2"),
    ));
    let all = assess(objs);
    let a = all.iter().find(|a| a.workload.name == "agent").unwrap();
    assert!(codes(a, Severity::Blocker).contains(&"exception-pod".to_string()));
    let b = all.iter().find(|a| a.workload.name == "agent2").unwrap();
    assert_eq!(b.verdict, Verdict::NotUsing);
    assert_eq!(codes(b, Severity::Note), ["exception-pod"]);
}

#[test]
fn unsupported_owner_is_reported_and_the_scan_goes_on() {
    let mut objs = prepared();
    objs.push(json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "roll-abc", "namespace": "apps", "labels": {"aadpodidbinding": "app"},
            "ownerReferences": [{"apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout", "name": "roll", "uid": "u", "controller": true}]},
        "spec": {"serviceAccountName": "web", "containers": [{"name": "c", "image": "i"}]}}));
    let all = assess(objs);
    let a = all.iter().find(|a| a.workload.kind == "Rollout").unwrap();
    assert_eq!(a.workload.name, "roll");
    assert!(codes(a, Severity::Note).contains(&"unsupported-owner".to_string()));
}

#[test]
fn pods_roll_up_to_deployments_and_cronjobs_and_idle_templates_count() {
    let mut objs = prepared();
    objs.push(json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
        "metadata": {"name": "web-5f7c", "namespace": "apps",
          "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "uid": "u", "controller": true}]},
        "spec": {"selector": {"matchLabels": {"app": "web"}}}}));
    objs.push(json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web-5f7c-xyz12", "namespace": "apps", "labels": {"aadpodidbinding": "app"},
          "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-5f7c", "uid": "u", "controller": true}]},
        "spec": {"containers": [{"name": "c", "image": "i"}]}}));
    objs.push(json!({"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "nightly", "namespace": "apps"},
        "spec": {"schedule": "0 0 * * *", "jobTemplate": {"spec": {"template": {"metadata": {"labels": {"aadpodidbinding": "app"}},
          "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "i"}]}}}}}}));
    let all = assess(objs);
    assert_eq!(
        all.len(),
        2,
        "{:?}",
        all.iter()
            .map(|a| (&a.workload.kind, &a.workload.name))
            .collect::<Vec<_>>()
    );
    let web = all.iter().find(|a| a.workload.name == "web").unwrap();
    assert_eq!(
        (web.workload.kind.as_str(), web.workload.live_pods),
        ("Deployment", 1)
    );
    let cron = all.iter().find(|a| a.workload.kind == "CronJob").unwrap();
    assert_eq!(cron.workload.live_pods, 0, "idle CronJob still reported");
    assert!(cron.uses_pod_identity);
}

#[test]
fn an_in_cluster_issuer_is_no_oidc_issuer() {
    for issuer in [
        "https://kubernetes.default.svc.cluster.local",
        "https://kubernetes.default.svc",
        "http://oidc.example.com/",
    ] {
        let inv = inventory(prepared(), Some(issuer));
        let ctx = ClusterContext::from_inventory(&inv, MatchOptions::standard(false));
        let plan = podid_cli::report::assess(&inv, &ctx);
        let a = &plan[0];
        assert_eq!(codes(a, Severity::Blocker), ["no-oidc-issuer"], "{issuer}");
        let f = a.findings.iter().find(|f| f.code == "no-oidc-issuer");
        assert!(f.unwrap().message.contains(issuer), "{issuer}");
        let r = Report::build(&inv, &ctx, &[]);
        let cluster = r.cluster.as_ref().unwrap();
        assert!(cluster.findings[0].message.contains(issuer), "{issuer}");
        assert_eq!(
            cluster.facts.oidc_issuer.as_deref(),
            Some(issuer),
            "recorded as read"
        );
    }
}

#[test]
fn an_annotation_naming_another_identity_is_not_counted_as_done() {
    let mut objs = prepared();
    objs[3] = sa(
        "apps",
        "web",
        json!({"azure.workload.identity/client-id": "C9", "podid.dev/federated-credentials": "c1"}),
    );
    let a = one(objs, "web");
    assert!(!a.bridge.annotation_present);
    assert!(a.bridge.credential_ready);
    assert_eq!(codes(&a, Severity::Step), ["service-account-annotation"]);
    assert!(
        a.findings[0].message.contains("now names C9"),
        "{:?}",
        a.findings
    );
}

/// A file's pods are kept whole once per controller and counted otherwise (and owned ReplicaSets and Jobs
/// without theirs, which the plan never reads): the report is the same as from every object
/// kept whole, also where a workload is absent and its template comes from a pod.
#[test]
fn a_snapshot_read_keeping_one_pod_per_controller_reports_as_if_read_whole() {
    let mut objects = support::synth::scale_objects(4, 120);
    // Some Deployments absent from the input: their pods' specs stand in for the template.
    let mut n = 0;
    objects.retain(|o| {
        if o["kind"] != "Deployment" {
            return true;
        }
        n += 1;
        n % 3 != 0
    });
    // A CronJob's Job and pod, and a bare pod, with kubectl's bulky bookkeeping.
    let tpl = json!({"metadata": {"labels": {"aadpodidbinding": "app-team-000"}},
        "spec": {"serviceAccountName": "nightly", "containers": [{"name": "c", "image": "c:1"}]}});
    let owner = |kind: &str, name: &str| json!([{"apiVersion": "batch/v1", "kind": kind, "name": name, "uid": name, "controller": true}]);
    objects.push(json!({"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "nightly", "namespace": "team-000"},
        "spec": {"schedule": "@daily", "jobTemplate": {"spec": {"template": tpl}}}}));
    objects.push(json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "nightly-29000000", "namespace": "team-000",
        "ownerReferences": owner("CronJob", "nightly")}, "spec": {"template": tpl}}));
    for (name, refs) in [
        ("nightly-29000000-abcde", owner("Job", "nightly-29000000")),
        ("bare", Value::Null),
    ] {
        let mut pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "team-000",
            "labels": {"aadpodidbinding": "app-team-000"},
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"},
            "managedFields": [{"manager": "kubectl", "operation": "Update"}]},
            "spec": tpl["spec"], "status": {"phase": "Running"}});
        if !refs.is_null() {
            pod["metadata"]["ownerReferences"] = refs;
        }
        objects.push(pod);
    }

    let text =
        serde_json::to_string(&json!({"apiVersion": "v1", "kind": "List", "items": objects}))
            .unwrap();
    // As the report reads files.
    let mut read = Inventory::compact();
    read.add_text(&text, "cluster.json").unwrap();
    // The same objects, every one kept whole.
    let mut whole = Inventory::default();
    fn typed<T: serde::de::DeserializeOwned>(o: &Value) -> T {
        serde_json::from_value(o.clone()).unwrap()
    }
    for o in &objects {
        match o["kind"].as_str().unwrap() {
            "Pod" => whole.pods.push(typed(o)),
            "ServiceAccount" => whole.service_accounts.push(typed(o)),
            "Node" => whole.nodes.push(typed(o)),
            "Deployment" => whole.deployments.push(typed(o)),
            "ReplicaSet" => whole.replica_sets.push(typed(o)),
            "Job" => whole.jobs.push(typed(o)),
            "CronJob" => whole.cron_jobs.push(typed(o)),
            "AzureIdentity" => whole.identities.push(typed(o)),
            "AzureIdentityBinding" => whole.bindings.push(typed(o)),
            "MutatingWebhookConfiguration" => whole.webhooks.push(typed(o)),
            k => panic!("the test does not sort {k}"),
        }
    }
    let counted: usize = read.more_pods.values().sum();
    assert_eq!(read.pods.len() + counted, whole.pods.len());
    assert!(
        read.pods.len() * 3 < whole.pods.len(),
        "{} of {} pods kept whole",
        read.pods.len(),
        whole.pods.len()
    );
    assert!(
        read.pods
            .iter()
            .all(|p| p.metadata.managed_fields.is_none() && p.status.is_none())
    );
    // Owned ReplicaSets and a CronJob's Job are known by their controller only.
    assert!(read.replica_sets.is_empty() && read.jobs.is_empty());
    assert_eq!(
        read.owned.len(),
        whole.replica_sets.len() + whole.jobs.len()
    );
    let report = |inv: &Inventory| {
        let ctx = ClusterContext::from_inventory(inv, MatchOptions::standard(false));
        serde_json::to_value(Report::build(inv, &ctx, &[])).unwrap()
    };
    let (from_file, from_whole) = (report(&read), report(&whole));
    assert!(from_whole["workloads"].as_array().unwrap().len() > 20);
    assert_eq!(from_file, from_whole);
}
