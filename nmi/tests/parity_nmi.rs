//! Side by side with the original NMI (aad-pod-identity v1.8.17's `cmd/nmi`, built from the Go
//! module proxy by tests/peers/build.sh): both agents watch the same fake AKS node of the real
//! API server, take tokens from the same emulated IMDS and Entra, and are sent the same
//! requests from the same pod addresses. Status codes and bodies must agree, except for the
//! differences docs/parity.md lists as deliberate, which this test pins.
//!
//! The original writes iptables rules wherever it runs, so it runs inside a network namespace
//! this test creates; the test process bridges that namespace's loopback ports for the API
//! server and the emulator (and 169.254.169.254:80, the IMDS address the original hard-codes)
//! to the real ones. Requests to it are sent from inside the namespace, from the pods' 127.x
//! addresses, by the same small client that talks to our agent.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, PostParams};
use podid_azure_emulator::{Emulator, Settings};
use podid_crds::policy::Mode;
use podid_crds::{AzureAssignedIdentity, AzureIdentity, AzureIdentityBinding, EmbeddedIdentity};
use podid_nmi::server::ServerConfig;
use podid_nmi::wait::RetryPolicy;
use podid_testkit::{Cluster, NodePool};
use serde_json::{Value, json};

mod live;
use live::hostnet::{HostNet, Request, send};
use live::{claims, obj, start_agent};

/// (identity, AzureAssignedIdentity state) of one pod.
type Assignments = &'static [(&'static str, &'static str)];

/// What is compared of one answer: the status, and the body — for a token, the claims that
/// say whose it is and the fields present (tokens themselves differ by issue time).
fn normal(v: &Value) -> String {
    let body = v["body"].as_str().unwrap_or_default();
    let status = format!(
        "{} ({})",
        v["status"].as_u64().unwrap_or_default(),
        v["content_type"].as_str().unwrap_or_default()
    );
    if let Ok(Value::Object(t)) = serde_json::from_str::<Value>(body)
        && let Some(token) = t.get("access_token").and_then(Value::as_str)
    {
        let c = claims(token);
        let keys: Vec<&String> = t.keys().collect();
        return format!(
            "{status} token appid={} aud={} resource={} token_type={} fields={keys:?}",
            c["appid"], c["aud"], t["resource"], t["token_type"]
        );
    }
    format!("{status} {}", body.trim_end())
}

#[tokio::test]
async fn the_original_nmi_and_podid_nmi_answer_the_same_requests_alike() {
    let original = podid_testkit::peer_binary("nmi").expect("the original NMI");
    let cluster = Cluster::shared_async().await;
    let ns = cluster.namespace("parity").await;
    let client = ns.client.clone();
    let pool = NodePool::aks("parity", 1);
    cluster.add_nodes(&pool).await.expect("fake node ready");
    let node = pool.node_name(0);

    // Azure: one instance (the original asks IMDS without naming one); a and b are on it, c is
    // not; an app registration with a secret for the service-principal identity.
    let emu = Emulator::start(Settings::default()).await.unwrap();
    let vmss = emu.add_scale_set(&pool.resource_group, &pool.scale_set, 1);
    let (a, b, c) = (
        emu.add_identity("rg", "par-a"),
        emu.add_identity("rg", "par-b"),
        emu.add_identity("rg", "par-c"),
    );
    emu.preassign(&vmss, &a.id);
    emu.preassign(&vmss, &b.id);
    let sp_client = "5e1f0000-0000-0000-0000-0000000da7a0";
    emu.add_app(sp_client, Some("s3cret"), None);

    // Kubernetes: identities, bindings, pods, and the assignments a controller would have made.
    let ids: Api<AzureIdentity> = Api::namespaced(client.clone(), &ns.name);
    let mut identity = BTreeMap::new();
    for (name, ident) in [("a", &a), ("b", &b), ("c", &c)] {
        identity.insert(
            name,
            ids.create(
                &PostParams::default(),
                &obj(json!({
                    "metadata": {"name": name},
                    "spec": {"type": 0, "resourceID": ident.id, "clientID": ident.client_id}
                })),
            )
            .await
            .unwrap(),
        );
    }
    Api::<Secret>::namespaced(client.clone(), &ns.name)
        .create(
            &PostParams::default(),
            &obj(json!({"metadata": {"name": "sp-secret"}, "stringData": {"clientsecret": "s3cret"}})),
        )
        .await
        .unwrap();
    identity.insert(
        "sp",
        ids.create(
            &PostParams::default(),
            &obj(json!({
                "metadata": {"name": "sp"},
                "spec": {"type": 1, "clientID": sp_client, "tenantID": emu.tenant_id(),
                         "adEndpoint": format!("{}/", emu.arm_endpoint()),
                         "clientPassword": {"name": "sp-secret", "namespace": ns.name}}
            })),
        )
        .await
        .unwrap(),
    );
    let bindings: Api<AzureIdentityBinding> = Api::namespaced(client.clone(), &ns.name);
    for (binding, identity, selector) in [
        ("bind-a", "a", "sel-a"),
        ("bind-b", "b", "sel-b"),
        ("bind-c", "c", "sel-c"),
        ("bind-sp", "sp", "sel-sp"),
        ("bind-ab-a", "a", "sel-ab"),
        ("bind-ab-b", "b", "sel-ab"),
    ] {
        bindings
            .create(
                &PostParams::default(),
                &obj(json!({
                    "metadata": {"name": binding},
                    "spec": {"azureIdentity": identity, "selector": selector}
                })),
            )
            .await
            .unwrap();
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    // pod -> (label, the assignments it has and their state)
    let layout: [(&str, &str, Assignments); 6] = [
        ("pod-a", "sel-a", &[("a", "Assigned")]),
        ("pod-ab", "sel-ab", &[("a", "Assigned"), ("b", "Assigned")]),
        ("pod-c", "sel-c", &[("c", "Assigned")]),
        ("pod-sp", "sel-sp", &[("sp", "Assigned")]),
        ("pod-pending", "sel-b", &[("b", "Created")]),
        ("pod-none", "none", &[]),
    ];
    for (pod, label, _) in layout {
        pods.create(
            &PostParams::default(),
            &obj(json!({
                "metadata": {"name": pod, "labels": {"aadpodidbinding": label}},
                "spec": {"nodeName": node, "automountServiceAccountToken": false,
                         "containers": [{"name": "c", "image": "registry.invalid/app:1"}]}
            })),
        )
        .await
        .unwrap();
    }
    let running =
        podid_testkit::wait_for_running_pods(pods.clone(), "aadpodidbinding", layout.len(), 120)
            .await
            .expect("pods Running");
    let ip: BTreeMap<String, String> = running
        .iter()
        .map(|p| {
            (
                p.metadata.name.clone().unwrap(),
                p.status.as_ref().unwrap().pod_ip.clone().unwrap(),
            )
        })
        .collect();
    let assigned: Api<AzureAssignedIdentity> = Api::namespaced(client.clone(), &ns.name);
    for (pod, _, assignments) in layout {
        for (name, state) in assignments {
            assigned
                .create(
                    &PostParams::default(),
                    &obj(json!({
                        "metadata": {"name": format!("{pod}-{}-{name}", ns.name), "labels": {"nodename": node}},
                        "spec": {"pod": pod, "podNamespace": ns.name, "nodename": node,
                                 "azureIdentityRef": serde_json::to_value(EmbeddedIdentity::from(&identity[name])).unwrap()},
                        "status": {"status": state}
                    })),
                )
                .await
                .unwrap();
        }
    }

    // The original, in its namespace, with the same retry settings as ours below.
    let Some(net) = HostNet::create("parity_nmi", "peer", cluster, &emu) else {
        return;
    };
    let peer = net.original_nmi(&original, cluster, &node, &ns.name);

    // Ours, in the test's namespace, the same settings.
    let config = ServerConfig {
        mode: Mode::Standard,
        imds_endpoint: url::Url::parse(&format!("{}/", emu.arm_endpoint())).unwrap(),
        retry: RetryPolicy {
            created_attempts: 3,
            assigned_attempts: 2,
            interval: Duration::from_secs(1),
        },
        ..Default::default()
    };
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let ours = SocketAddr::from(([127, 0, 0, 1], listener.local_addr().unwrap().port()));
    let (_agent, our_metrics) = live::start_agent_with_metrics(
        listener,
        client.clone(),
        &node,
        config.clone(),
        &emu.arm_endpoint(),
    )
    .await;

    // The requests: every pod asks for every identity by every selector form, plus malformed
    // requests, the legacy API, proxied paths and a caller that is no pod.
    let token = "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fmanagement.azure.com%2F";
    let md = |h: &[(&str, &str)]| -> BTreeMap<String, String> {
        h.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let mut reqs = Vec::new();
    let mut add = |label: String, from: &str, path: String, headers: BTreeMap<String, String>| {
        reqs.push(Request {
            label,
            from: from.to_owned(),
            path,
            headers,
        })
    };
    for (pod, _, _) in layout {
        let from = &ip[pod];
        add(
            format!("{pod} default"),
            from,
            token.into(),
            md(&[("Metadata", "true")]),
        );
        for (name, ident) in [("a", &a), ("b", &b), ("c", &c)] {
            add(
                format!("{pod} client_id={name}"),
                from,
                format!("{token}&client_id={}", ident.client_id),
                md(&[("Metadata", "true")]),
            );
            add(
                format!("{pod} msi_res_id={name}"),
                from,
                format!("{token}&msi_res_id={}", ident.id),
                md(&[("Metadata", "true")]),
            );
        }
        add(
            format!("{pod} client_id=sp"),
            from,
            format!("{token}&client_id={sp_client}"),
            md(&[("Metadata", "true")]),
        );
    }
    let pa = &ip["pod-a"];
    add("no Metadata header".into(), pa, token.into(), md(&[]));
    add(
        "no resource".into(),
        pa,
        "/metadata/identity/oauth2/token?api-version=2018-02-01".into(),
        md(&[("Metadata", "true")]),
    );
    add(
        "legacy /host/token".into(),
        pa,
        "/host/token/?resource=https%3A%2F%2Fmanagement.azure.com%2F".into(),
        md(&[("podname", "pod-a"), ("podns", &ns.name)]),
    );
    add(
        "legacy /host/token without pod headers".into(),
        pa,
        "/host/token/?resource=https%3A%2F%2Fmanagement.azure.com%2F".into(),
        md(&[]),
    );
    add(
        "instance metadata".into(),
        pa,
        "/metadata/instance?api-version=2021-02-01".into(),
        md(&[("Metadata", "true")]),
    );
    add(
        "an unknown path".into(),
        pa,
        "/metadata/unknown?api-version=2021-02-01".into(),
        md(&[("Metadata", "true")]),
    );
    add(
        "a caller that is no pod".into(),
        "127.10.255.254",
        token.into(),
        md(&[("Metadata", "true")]),
    );

    // With --wait-for-unbound-pods, ours waits for a pod without binding as the original does.
    let (waiting, _waiting_agent) = start_agent(
        client.clone(),
        &node,
        ServerConfig {
            wait_for_unbound_pods: true,
            ..config.clone()
        },
        &emu.arm_endpoint(),
    )
    .await;
    let unbound: Vec<Request> = reqs
        .iter()
        .filter(|r| r.label == "pod-none default")
        .cloned()
        .collect();
    let ours = ours.to_string();
    let waiting = waiting.to_string();
    let (theirs, ours_answers, ours_waiting) = tokio::join!(
        net.send("127.0.0.1:2579", Some("127.0.0.1:8085"), &reqs),
        send(None, &ours, None, &reqs),
        send(None, &waiting, None, &unbound),
    );
    let (_, original_metrics) = net.get("http://127.0.0.1:9095/metrics").await;
    let log = peer.log();
    peer.stop().await;
    // The same requests leave the same metric families, types and label names on both sides
    // (dashboards and alerts written for the original keep working).
    let metric_differences = podid_testkit::exposition::differences(
        &original_metrics,
        &our_metrics.render(),
        "aadpodidentity_",
    );
    assert!(
        podid_testkit::exposition::families(&original_metrics)
            .keys()
            .filter(|f| f.starts_with("aadpodidentity_"))
            .count()
            >= 4,
        "the original exposed its metrics: {original_metrics}"
    );
    assert!(
        metric_differences.is_empty(),
        "metrics unlike the original's: {metric_differences:#?}"
    );
    // podid's own additions are named podid_*: no other family a dashboard could mistake for
    // the original's.
    let unknown = podid_testkit::exposition::unknown_families(
        &original_metrics,
        &our_metrics.render(),
        podid_testkit::exposition::AAD_POD_IDENTITY_FAMILIES,
        "podid_",
    );
    assert!(
        unknown.is_empty(),
        "families podid-nmi exposes that are neither the original's nor podid_*: {unknown:?}"
    );

    let expected = expected_verdicts(&layout);
    assert_eq!(
        expected.keys().collect::<Vec<_>>(),
        reqs.iter()
            .map(|r| &r.label)
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect::<Vec<_>>(),
        "every request has exactly one expected verdict"
    );
    let mut table = String::new();
    let mut wrong = Vec::new();
    let mut counts = BTreeMap::<String, usize>::new();
    for ((r, t), o) in reqs.iter().zip(&theirs).zip(&ours_answers) {
        // Ours was pointed at the emulator where the original has 169.254.169.254 built in.
        let (t, o) = (
            normal(t),
            normal(o).replace(&emu.arm_endpoint(), "http://169.254.169.254"),
        );
        let verdict = if t == o {
            Some(Expected::Same)
        } else {
            deliberate(&t, &o)
        };
        let want = expected[&r.label];
        let shown = verdict.map_or("UNEXPLAINED".to_owned(), |v| format!("{v:?}"));
        if verdict != Some(want) {
            wrong.push(format!("{}: {shown}, expected {want:?}", r.label));
        }
        *counts.entry(shown.clone()).or_default() += 1;
        table.push_str(&format!(
            "{} [{shown}]\n    original: {t}\n    podid:    {o}\n",
            r.label
        ));
    }
    eprintln!("{counts:#?}");
    eprintln!("{table}");
    let at = reqs
        .iter()
        .position(|r| r.label == "pod-none default")
        .unwrap();
    assert_eq!(
        normal(&ours_waiting[0]),
        normal(&theirs[at]),
        "with --wait-for-unbound-pods a pod without binding gets the original's answer"
    );
    assert!(
        wrong.is_empty(),
        "answers not as expected: {wrong:#?}\n{table}\noriginal NMI log: {}",
        log
    );
}

/// The verdict expected for one request: the original's answer, or one of the differences
/// docs/parity.md ("Node agent (NMI)") lists as deliberate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expected {
    Same,
    /// A named identity the pod has no binding for: 403 at once instead of a wait and 404.
    NotBound,
    /// A pod no binding grants an identity: 404 at once instead of a wait.
    NoBinding,
    /// A caller that is no pod of the node: 403 instead of 500.
    UnknownCaller,
    /// Several identities, none named: IMDS's 400 instead of a random one.
    SeveralIdentities,
}

/// The expected verdict of every request, by label, from the pods' layout: a pod asking for an
/// identity its bindings grant (assigned or still being assigned) gets the original's answer;
/// one asking for any other identity is refused at once.
fn expected_verdicts(
    layout: &[(&'static str, &'static str, Assignments)],
) -> BTreeMap<String, Expected> {
    let mut out = BTreeMap::new();
    for (pod, _, assignments) in layout {
        let default = match assignments.len() {
            0 => Expected::NoBinding,
            1 => Expected::Same,
            _ => Expected::SeveralIdentities,
        };
        out.insert(format!("{pod} default"), default);
        for name in ["a", "b", "c", "sp"] {
            let granted = assignments.iter().any(|(i, _)| *i == name);
            let verdict = if granted {
                Expected::Same
            } else {
                Expected::NotBound
            };
            out.insert(format!("{pod} client_id={name}"), verdict);
            if name != "sp" {
                out.insert(format!("{pod} msi_res_id={name}"), verdict);
            }
        }
    }
    for label in [
        "no Metadata header",
        "no resource",
        "legacy /host/token",
        "legacy /host/token without pod headers",
        "instance metadata",
        "an unknown path",
    ] {
        out.insert(label.to_owned(), Expected::Same);
    }
    out.insert(
        "a caller that is no pod".to_owned(),
        Expected::UnknownCaller,
    );
    out
}

/// Which deliberate difference two unlike answers are, recognised by what each side answers;
/// `None` for anything else.
fn deliberate(original: &str, ours: &str) -> Option<Expected> {
    // "<status> (<content type>) <body>" -> "<status> <body>"
    let drop_type = |s: &str| {
        let (status, rest) = s.split_once(' ').unwrap_or((s, ""));
        let body = rest.split_once(") ").map_or(rest, |(_, b)| b);
        format!("{status} {body}")
    };
    let (original, ours) = (&drop_type(original)[..], &drop_type(ours)[..]);
    let waited = |s: &str| s.starts_with("404 ") && s.contains("in CREATED state failed after");
    if waited(original)
        && original.contains("clientID in request:")
        && ours.starts_with("403 the requested identity is not bound to pod ")
    {
        return Some(Expected::NotBound);
    }
    if waited(original) && ours.starts_with("404 no azure identity found for pod ") {
        return Some(Expected::NoBinding);
    }
    if original == "500 pod list is empty" && ours.starts_with("403 no pod on this node has IP ") {
        return Some(Expected::UnknownCaller);
    }
    if original.starts_with("200 token ")
        && ours.starts_with("400 {\"error\":\"invalid_request\",\"error_description\":\"Multiple user assigned identities exist for pod ")
    {
        return Some(Expected::SeveralIdentities);
    }
    None
}
