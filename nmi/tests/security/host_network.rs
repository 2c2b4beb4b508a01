//! Attack: a process in the node's network namespace (a `hostNetwork` pod, or anything running
//! on the node) calls the agent from the node's address, which is also the address of every
//! `hostNetwork` pod on the node, to be served as one of them.
//!
//! The original NMI v1.8.17 matches callers against `status.podIP` of the node's Pending or
//! Running pods, `hostNetwork` pods included: with exactly one such pod bound to an identity,
//! any process on the node calling from the node's address gets that identity; with several,
//! 500. podid-nmi never matches `hostNetwork` pods: the node's address names no pod, 403.
//! Both serve the legacy `/host/token` to callers at 127.0.0.1, naming the pod in headers: a
//! process on the node may ask it for any pod of the node (docs/security.md).

use serde_json::json;

use crate::site::{Site, raw};

const NODE: &str = "spoof-hostnet-node";
/// The node's address, and so its `hostNetwork` pod's.
const NODE_IP: &str = "127.11.4.1";
const APP_IP: &str = "127.11.4.10";

#[tokio::test]
async fn host_network_process_is_served_as_no_pod() {
    let site = Site::start("spoof-hostnet", NODE, &["host", "app"]).await;
    site.add_node(NODE, Some(NODE_IP)).await;
    site.run_pod(
        "host-agent",
        NODE,
        json!({"aadpodidbinding": "host"}),
        NODE_IP,
        json!({"hostNetwork": true}),
    )
    .await;
    site.run_pod(
        "app",
        NODE,
        json!({"aadpodidbinding": "app"}),
        APP_IP,
        json!({}),
    )
    .await;
    // The pod with its own address is served (the watch has passed both pods).
    site.ask_until(APP_IP, "", |s, b| {
        s == 200 && site.holder(b).as_deref() == Some("app")
    })
    .await;

    // From the node's address (the hostNetwork pod's, every node process's) and from the
    // loopback address a node process calls from by default: no pod, whatever is named.
    for from in [NODE_IP, "127.0.0.1"] {
        for query in [
            String::new(),
            format!("client_id={}", site.client_id("host")),
            format!("client_id={}", site.client_id("app")),
        ] {
            let (status, body) = crate::live::call(site.agent, from.parse().unwrap(), &query).await;
            assert_eq!(
                (status, body.as_str()),
                (403, format!("no pod on this node has IP {from}\n").as_str()),
                "from {from}, {query:?}"
            );
        }
    }

    // The legacy host API, as in the original: only from 127.0.0.1, for the pod named.
    let host_token = |pod: &str| {
        format!(
            "GET /host/token/?resource=https%3A%2F%2Fvault.azure.net HTTP/1.1\r\nHost: 127.0.0.1\r\npodns: {}\r\npodname: {pod}",
            site.namespace
        )
    };
    let (status, body) = raw(site.agent, NODE_IP, &host_token("app")).await;
    assert_eq!(
        (status, body.as_str()),
        (500, "request remote address is not from a host\n")
    );
    let (status, body) = raw(site.agent, "127.0.0.1", &host_token("app")).await;
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["clientid"], site.client_id("app"), "{body}");
}
