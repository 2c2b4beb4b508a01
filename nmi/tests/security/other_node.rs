//! Attack: a request reaches the agent from the address of a pod scheduled on another node (a
//! pod there reaching this node's agent, or a caller here using that address). The agent
//! watches the pods of its own node only (`spec.nodeName`) and serves only them: the caller is
//! refused as no pod of this node, whatever identity it names.

use serde_json::json;

use crate::site::Site;

const NODE: &str = "spoof-this-node";
const OTHER_NODE: &str = "spoof-other-node";
const HERE_IP: &str = "127.11.2.10";
const ELSEWHERE_IP: &str = "127.11.2.11";

#[tokio::test]
async fn pod_scheduled_on_another_node_is_not_served() {
    let site = Site::start("spoof-node", NODE, &["shared"]).await;
    site.add_node(OTHER_NODE, None).await;
    // The same binding on both pods: only the node tells them apart. The pod elsewhere is
    // created first, so once the agent serves the pod here its watch has passed both.
    site.run_pod(
        "elsewhere",
        OTHER_NODE,
        json!({"aadpodidbinding": "shared"}),
        ELSEWHERE_IP,
        json!({}),
    )
    .await;
    site.run_pod(
        "here",
        NODE,
        json!({"aadpodidbinding": "shared"}),
        HERE_IP,
        json!({}),
    )
    .await;
    site.ask_until(HERE_IP, "", |s, b| {
        s == 200 && site.holder(b).as_deref() == Some("shared")
    })
    .await;

    let shared = site.client_id("shared").to_owned();
    for query in ["".to_owned(), format!("client_id={shared}")] {
        let (status, body) =
            crate::live::call(site.agent, ELSEWHERE_IP.parse().unwrap(), &query).await;
        assert_eq!(
            (status, body.as_str()),
            (
                403,
                format!("no pod on this node has IP {ELSEWHERE_IP}\n").as_str()
            ),
            "{query:?}"
        );
    }
    // Still refused later (not a race with the watch).
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let (status, body) = crate::live::call(site.agent, ELSEWHERE_IP.parse().unwrap(), "").await;
    assert_eq!(status, 403, "{body}");
}
