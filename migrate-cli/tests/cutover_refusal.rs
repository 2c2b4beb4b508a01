//! `podid cutover switch` refuses before changing anything when the Workload ID webhook is not
//! registered, or is registered but not answering (it fails closed: a broken webhook would
//! stop every new labelled pod); and will not change several workloads without --yes when
//! there is no terminal to ask on. A test binary of its own: the webhook's registration is
//! cluster-wide, and the other cutover tests register one.

#[path = "support/cutover.rs"]
mod support;

use serde_json::Value;
use support::*;

async fn untouched(c: &kube::Client, n: &str, before: &[Value]) {
    for b in before {
        let name = b["metadata"]["name"].as_str().unwrap();
        let now = get(c, n, "Deployment", name).await;
        assert_eq!(
            now["metadata"]["generation"], b["metadata"]["generation"],
            "{name}"
        );
        assert_eq!(now["spec"]["template"], b["spec"]["template"], "{name}");
        let r = record(c, n, &format!("deployment-{name}")).await;
        assert_eq!(
            (r.spec.stage, r.spec.recorded_template),
            (None, None),
            "{name}"
        );
    }
}

#[tokio::test]
async fn switch_refuses_without_a_registered_and_answering_webhook() {
    let cluster = cluster(false).await;
    let ns = cluster.namespace("cutover-refuse").await;
    let (c, n) = (&ns.client, ns.name.as_str());
    identity(c, n).await;
    let mut before = Vec::new();
    for w in ["one", "two"] {
        workload(c, n, "Deployment", w, 1, "app", None).await;
        bridged(c, n, "Deployment", w, w).await;
    }
    for w in ["one", "two"] {
        before.push(rolled_out(c, n, "Deployment", w, 90).await);
    }

    // No terminal, two workloads, no --yes: a usage error, nothing asked, nothing changed.
    let out = podid(cluster, &["cutover", "switch", "-n", n, "-q"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("pass --yes"), "{}", text(&out));
    untouched(c, n, &before).await;

    // No webhook registered.
    let out = podid(cluster, &["cutover", "switch", "-n", n, "-q", "--yes"]);
    println!("{}", text(&out));
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        text(&out).contains("the Workload ID webhook is not registered"),
        "{}",
        text(&out)
    );
    untouched(c, n, &before).await;

    // Registered, but nothing answers at its address: the dry-run probe fails closed.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = dead.local_addr().unwrap().port();
    drop(dead);
    register(
        c,
        &format!("https://127.0.0.1:{port}/mutate-v1-pod"),
        &stand_in_ca(),
    )
    .await;
    let out = podid(cluster, &["cutover", "switch", "-n", n, "-q", "--yes"]);
    println!("{}", text(&out));
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        text(&out).contains("registered but not answering"),
        "{}",
        text(&out)
    );
    untouched(c, n, &before).await;

    // Once it answers, the same command goes through.
    register_stand_in(c).await;
    let out = podid(
        cluster,
        &[
            "cutover",
            "switch",
            "-n",
            n,
            "-q",
            "--yes",
            "--timeout",
            "120s",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}
