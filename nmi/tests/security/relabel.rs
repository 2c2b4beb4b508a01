//! Attack: a pod's `aadpodidbinding` label is changed or removed (by whoever may edit the pod:
//! a rollout, an admin taking an identity away) while its token requests are in flight or right
//! after. Once the agent's watch shows the change, the old identity is never served: not from
//! the cache to a new request, and not to a request whose token was being fetched when the
//! change came (its answer is `503`, and the retry is answered from the new labels).
//!
//! The bound: from the moment the API server accepts the change until the agent's watch
//! delivers it (the watch latency), the old identity may still be served, as it was granted
//! when the request was decided. The test holds that latency under `WATCH_LATENCY_BOUND`.

use std::time::{Duration, Instant};

use kube::api::{Patch, PatchParams};
use podid_azure_emulator::Fault;
use serde_json::{Value, json};

use crate::live::call_resource;
use crate::site::Site;

/// How long the agent may take to see a label change (its watch of the node's pods).
const WATCH_LATENCY_BOUND: Duration = Duration::from_secs(5);
/// IMDS's delay for the requests in flight: longer than the bound, so that they end after the
/// agent has seen the change.
const IMDS_LATENCY_MS: u64 = 12_000;
const IN_FLIGHT: usize = 4;
const VAULT: &str = "https://vault.azure.net";
const STORAGE: &str = "https://storage.azure.com/";

/// Pod `app` at `ip`, labelled for identity `old`, gets tokens; with `IN_FLIGHT` requests for an
/// uncached resource waiting on IMDS, its label becomes `label` (`None`: removed). Returns the
/// site once the requests in flight have been answered (none with `old`'s token).
async fn relabel_mid_flight(prefix: &str, node: &str, ip: &str, label: Option<&str>) -> Site {
    let site = Site::start(prefix, node, &["old", "new"]).await;
    site.run_pod(
        "app",
        node,
        json!({"aadpodidbinding": "old"}),
        ip,
        json!({}),
    )
    .await;
    // Served `old`; its Key Vault token is now in the agent's cache.
    site.ask_until(ip, "", |s, b| {
        s == 200 && site.holder(b).as_deref() == Some("old")
    })
    .await;
    let old = site.client_id("old").to_owned();
    let from: std::net::IpAddr = ip.parse().unwrap();

    // Requests for Storage (not cached): each waits on IMDS.
    let before = site.emu.call_count("GET imds.token");
    site.emu.inject(Fault {
        route: "GET imds.token".into(),
        latency_ms: Some(IMDS_LATENCY_MS),
        count: Some(IN_FLIGHT as u32),
        ..Default::default()
    });
    let agent = site.agent;
    let in_flight: Vec<_> = (0..IN_FLIGHT)
        .map(|i| {
            let query = if i % 2 == 0 {
                String::new()
            } else {
                format!("client_id={old}")
            };
            tokio::spawn(async move {
                let answer = call_resource(agent, from, STORAGE, &query).await;
                (answer, Instant::now())
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    while site.emu.call_count("GET imds.token") < before + IN_FLIGHT as u64 {
        assert!(
            Instant::now() < deadline,
            "the requests did not reach IMDS within 20 s: {:?}",
            site.emu.calls()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The change.
    let labels = match label {
        Some(l) => json!({"aadpodidbinding": l}),
        None => json!({"aadpodidbinding": Value::Null}),
    };
    site.pods
        .patch(
            "app",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": labels}})),
        )
        .await
        .unwrap();
    let changed = Instant::now();

    // Right after: a request naming `old` for the cached resource is served from the cache
    // until the agent sees the change, then refused.
    let seen = loop {
        let (status, body) = call_resource(agent, from, VAULT, &format!("client_id={old}")).await;
        if status != 200 {
            assert_eq!(status, 403, "{body}");
            break Instant::now();
        }
        assert_eq!(site.holder(&body).as_deref(), Some("old"), "{body}");
        assert!(
            changed.elapsed() < WATCH_LATENCY_BOUND,
            "the agent still served the old identity {:?} after the change (bound {WATCH_LATENCY_BOUND:?})",
            changed.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eprintln!(
        "{prefix}: the agent saw the label change {} ms after the API server accepted it (bound {} ms)",
        (seen - changed).as_millis(),
        WATCH_LATENCY_BOUND.as_millis()
    );

    // The requests in flight end after that: none carries the old identity's token.
    for task in in_flight {
        let ((status, body), ended) = tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .expect("the requests in flight are answered within 60 s")
            .unwrap();
        assert!(
            ended > seen,
            "a request in flight ended before the change was seen: the test proves nothing"
        );
        assert_ne!(
            site.holder(&body).as_deref(),
            Some("old"),
            "a request in flight got the old identity after the change was seen"
        );
        assert_eq!(status, 503, "{body}");
        assert!(
            body.contains(&format!(
                "pod {}/app changed while its token was fetched",
                site.namespace
            )),
            "{body}"
        );
    }
    site.emu.clear_faults();
    site
}

#[tokio::test]
async fn pod_relabelled_to_another_identity_mid_flight_never_gets_the_old_one_once_seen() {
    let ip = "127.11.3.10";
    let site = relabel_mid_flight("spoof-relabel", "spoof-relabel-node", ip, Some("new")).await;
    // The retry is answered from the new label: the new identity, for either resource.
    for resource in [VAULT, STORAGE] {
        let (status, body) = call_resource(site.agent, ip.parse().unwrap(), resource, "").await;
        assert_eq!(
            (status, site.holder(&body).as_deref()),
            (200, Some("new")),
            "{body}"
        );
    }
    let (status, body) = call_resource(
        site.agent,
        ip.parse().unwrap(),
        STORAGE,
        &format!("client_id={}", site.client_id("old")),
    )
    .await;
    assert_eq!(status, 403, "{body}");
}

#[tokio::test]
async fn pod_unlabelled_mid_flight_never_gets_its_identity_once_seen() {
    let ip = "127.11.3.20";
    let site = relabel_mid_flight("spoof-unlabel", "spoof-unlabel-node", ip, None).await;
    for resource in [VAULT, STORAGE] {
        let (status, body) = call_resource(site.agent, ip.parse().unwrap(), resource, "").await;
        assert_eq!(status, 404, "{body}");
        assert!(body.contains("no azure identity found for pod"), "{body}");
    }
}
