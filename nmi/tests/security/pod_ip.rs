//! Attack: a pod is given the IP of a pod being deleted (the old pod's status still holds it,
//! the new pod's is not reported yet, or both claim it) and asks for a token: it must never
//! get the old pod's identity. The agent watches a real API server; pod status is written by
//! the test, as a kubelet would, so the IPs are chosen. The old pod's token stays in the agent's
//! cache throughout: naming the old pod's identity gets the new pod nothing either.

use std::net::IpAddr;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use podid_azure_emulator::{Emulator, Settings};
use podid_crds::policy::Mode;
use podid_nmi::server::ServerConfig;
use podid_testkit::Cluster;
use serde_json::json;

use crate::live::{bound_identity, call, claims, obj, start_agent};

const NODE: &str = "ip-reuse-node";
const IP: &str = "127.10.9.40";

/// Creates pod `name` on the node with binding label `label` and reports it Running at `IP`.
async fn running_pod(pods: &Api<Pod>, name: &str, label: &str) {
    pods.create(
        &PostParams::default(),
        &obj(json!({
            "metadata": {"name": name, "labels": {"aadpodidbinding": label}},
            "spec": {"nodeName": NODE, "containers": [{"name": "c", "image": "registry.invalid/app:1"}]}
        })),
    )
    .await
    .unwrap();
    pods.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"phase": "Running", "podIP": IP, "podIPs": [{"ip": IP}]}})),
    )
    .await
    .unwrap();
}

/// Asks for a token from `IP` until `done` accepts the answer (at most 30 s): the agent's view
/// follows the watch. Every answer on the way is checked by `never`.
async fn ask_until(
    agent: std::net::SocketAddr,
    never: &dyn Fn(u16, &str) -> Option<String>,
    done: &dyn Fn(u16, &str) -> bool,
) -> (u16, String) {
    let from: IpAddr = IP.parse().unwrap();
    for _ in 0..150 {
        let (status, body) = call(agent, from, "").await;
        if let Some(why) = never(status, &body) {
            panic!("{why}: {status} {body}");
        }
        if done(status, &body) {
            return (status, body);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("the agent's answer did not change within 30 s");
}

fn node_resource() -> kube::api::ApiResource {
    kube::api::ApiResource::erase::<k8s_openapi::api::core::v1::Node>(&())
}

fn account_resource() -> kube::api::ApiResource {
    kube::api::ApiResource::erase::<k8s_openapi::api::core::v1::ServiceAccount>(&())
}

fn appid(body: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(body).ok()?;
    Some(
        claims(v["access_token"].as_str()?)["appid"]
            .as_str()?
            .to_owned(),
    )
}

#[tokio::test]
async fn new_pod_with_a_deleted_pods_ip_never_gets_its_identity() {
    let cluster = Cluster::shared_async().await;
    let ns = cluster.namespace("ip-reuse").await;
    let client = ns.client.clone();
    let emu = Emulator::start(Settings::default()).await.unwrap();
    let vmss = emu.add_scale_set("rg", "aks-pool-1-vmss", 1);
    let (old_id, new_id) = (emu.add_identity("rg", "old"), emu.add_identity("rg", "new"));
    emu.preassign(&vmss, &old_id.id);
    emu.preassign(&vmss, &new_id.id);
    for (name, ident) in [("old", &old_id), ("new", &new_id)] {
        bound_identity(
            &client,
            &ns.name,
            name,
            json!({"type": 0, "clientID": ident.client_id, "resourceID": ident.id}),
            name,
        )
        .await;
    }
    let config = ServerConfig {
        mode: Mode::Managed,
        imds_endpoint: url::Url::parse(&emu.imds_endpoint("aks-pool-1-vmss_0")).unwrap(),
        pod_lookup_attempts: 1,
        ..Default::default()
    };
    let (agent, _guard) = start_agent(client.clone(), NODE, config, &emu.authority_host()).await;
    // What a controller manager would provide: the node object and the default account.
    for (api, object) in [
        (
            Api::<kube::api::DynamicObject>::all_with(client.clone(), &node_resource()),
            json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE}}),
        ),
        (
            Api::namespaced_with(client.clone(), &ns.name, &account_resource()),
            json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default"}}),
        ),
    ] {
        match api.create(&PostParams::default(), &obj(object)).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => panic!("{e}"),
        }
    }
    let pods: Api<Pod> = Api::namespaced(client, &ns.name);

    running_pod(&pods, "old", "old").await;
    let old_client = old_id.client_id.clone();
    let no_check = |_: u16, _: &str| None;
    ask_until(agent, &no_check, &|s, b| {
        s == 200 && appid(b).as_deref() == Some(old_client.as_str())
    })
    .await;
    // The old pod's token is in the agent's cache from here on: asked again, IMDS is not.
    let fetched = emu.call_count("GET imds.token");
    let (status, body) = call(agent, IP.parse().unwrap(), "").await;
    assert_eq!(
        appid(&body).as_deref(),
        Some(old_client.as_str()),
        "{status} {body}"
    );
    assert_eq!(
        emu.call_count("GET imds.token"),
        fetched,
        "served from the cache"
    );
    let name_old = [
        format!("client_id={old_client}"),
        format!("msi_res_id={}", old_id.id),
    ];

    // The old pod is being deleted (no kubelet confirms it, so it stays so); a caller at its
    // address is refused from the moment the agent sees the deletion.
    pods.delete("old", &DeleteParams::default()).await.unwrap();
    let never_old = |_: u16, b: &str| {
        (appid(b).as_deref() == Some(old_client.as_str()))
            .then(|| "a caller at a deleted pod's IP got its identity".to_owned())
    };
    let (status, body) = ask_until(agent, &no_check, &|s, _| s != 200).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("being deleted"), "{body}");

    // A new pod, bound to another identity, is given the same IP while the old one is going.
    running_pod(&pods, "new", "new").await;
    for _ in 0..10 {
        // Unnamed, or naming the old pod's identity, whose token the cache holds.
        for query in std::iter::once("").chain(name_old.iter().map(String::as_str)) {
            let (status, body) = call(agent, IP.parse().unwrap(), query).await;
            assert!(never_old(status, &body).is_none(), "{status} {body}");
            assert_eq!(status, 503, "{query}: {body}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Once the old pod is gone, the new pod gets its own identity, and only that.
    pods.delete("old", &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    let new_client = new_id.client_id.clone();
    ask_until(agent, &never_old, &|s, b| {
        s == 200 && appid(b).as_deref() == Some(new_client.as_str())
    })
    .await;
    // Naming the old pod's identity, still cached, is refused: it is not the new pod's.
    for query in &name_old {
        let (status, body) = call(agent, IP.parse().unwrap(), query).await;
        assert!(never_old(status, &body).is_none(), "{status} {body}");
        assert_eq!(status, 403, "{query}: {body}");
    }
}

/// The old pod is removed at once (grace period 0: the agent never sees it terminating), while
/// the agent's cache holds its token: its address is then no pod's, and once given to a new pod,
/// every answer to it, from the first, is a refusal or the new pod's own.
#[tokio::test]
async fn new_pod_at_a_force_deleted_pods_ip_never_gets_its_identity() {
    const NODE2: &str = "ip-reuse-force-node";
    const IP2: &str = "127.11.5.40";
    let cluster = Cluster::shared_async().await;
    let ns = cluster.namespace("ip-force").await;
    let client = ns.client.clone();
    let emu = Emulator::start(Settings::default()).await.unwrap();
    let vmss = emu.add_scale_set("rg", "aks-pool-1-vmss", 1);
    let (old_id, new_id) = (emu.add_identity("rg", "old"), emu.add_identity("rg", "new"));
    for (name, ident) in [("old", &old_id), ("new", &new_id)] {
        emu.preassign(&vmss, &ident.id);
        bound_identity(
            &client,
            &ns.name,
            name,
            json!({"type": 0, "clientID": ident.client_id, "resourceID": ident.id}),
            name,
        )
        .await;
    }
    let config = ServerConfig {
        mode: Mode::Managed,
        force_namespaced: true,
        imds_endpoint: url::Url::parse(&emu.imds_endpoint("aks-pool-1-vmss_0")).unwrap(),
        pod_lookup_attempts: 1,
        ..Default::default()
    };
    let (agent, _guard) = start_agent(client.clone(), NODE2, config, &emu.authority_host()).await;
    for (api, object) in [
        (
            Api::<kube::api::DynamicObject>::all_with(client.clone(), &node_resource()),
            json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE2}}),
        ),
        (
            Api::namespaced_with(client.clone(), &ns.name, &account_resource()),
            json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default"}}),
        ),
    ] {
        match api.create(&PostParams::default(), &obj(object)).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => panic!("{e}"),
        }
    }
    let pods: Api<Pod> = Api::namespaced(client, &ns.name);
    let from: IpAddr = IP2.parse().unwrap();
    let run = |name: &'static str| {
        let pods = pods.clone();
        async move {
            pods.create(
                &PostParams::default(),
                &obj(json!({
                    "metadata": {"name": name, "labels": {"aadpodidbinding": name}},
                    "spec": {"nodeName": NODE2, "containers": [{"name": "c", "image": "registry.invalid/app:1"}]}
                })),
            )
            .await
            .unwrap();
            pods.patch_status(
                name,
                &PatchParams::default(),
                &Patch::Merge(
                    json!({"status": {"phase": "Running", "podIP": IP2, "podIPs": [{"ip": IP2}]}}),
                ),
            )
            .await
            .unwrap();
        }
    };
    run("old").await;
    let old_client = old_id.client_id.clone();
    let mut served_old = false;
    for _ in 0..150 {
        let (status, body) = call(agent, from, "").await;
        if status == 200 && appid(&body).as_deref() == Some(old_client.as_str()) {
            served_old = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        served_old,
        "the old pod was served its identity within 30 s"
    );

    pods.delete("old", &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    let queries = [
        String::new(),
        format!("client_id={old_client}"),
        format!("msi_res_id={}", old_id.id),
    ];
    // Once the agent has seen the deletion, the address is no pod's: nothing for it, however
    // asked, although the cache holds the old pod's token.
    let mut refused = false;
    for _ in 0..150 {
        let (status, body) = call(agent, from, "").await;
        if status != 200 {
            assert_eq!(status, 403, "{body}");
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        refused,
        "the old pod's address was still served 30 s after its deletion"
    );
    for query in &queries {
        let (status, body) = call(agent, from, query).await;
        assert_eq!(
            (status, body.as_str()),
            (403, format!("no pod on this node has IP {IP2}\n").as_str()),
            "{query:?}"
        );
    }
    run("new").await;
    let new_client = new_id.client_id.clone();
    let mut served_new = false;
    for _ in 0..150 {
        for query in &queries {
            let (status, body) = call(agent, from, query).await;
            assert_ne!(
                appid(&body).as_deref(),
                Some(old_client.as_str()),
                "the new pod got the old pod's identity ({query:?}): {status} {body}"
            );
            if query.is_empty() && status == 200 {
                assert_eq!(appid(&body).as_deref(), Some(new_client.as_str()), "{body}");
                served_new = true;
            }
        }
        if served_new {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        served_new,
        "the new pod was served its identity within 30 s"
    );
    for query in &queries[1..] {
        let (status, body) = call(agent, from, query).await;
        assert_eq!(status, 403, "{query}: {body}");
    }
}
