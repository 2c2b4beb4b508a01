//! Attack: a pod forges the headers by which proxies pass a client's address on
//! (`X-Forwarded-For`, `Forwarded`, `X-Real-IP`, …) or names another host (`Host`), giving a
//! victim pod's address, to be served as the victim. The agent knows the caller by the TCP
//! source address alone: the forger gets its own identity, or a refusal, never the victim's.

use crate::site::{Site, raw};

const NODE: &str = "spoof-headers-node";
const VICTIM_IP: &str = "127.11.1.10";
const ATTACKER_IP: &str = "127.11.1.11";
/// An address that is no pod's.
const STRANGER_IP: &str = "127.11.1.12";

/// Every header a proxy or framework might read a client's address or host from, each saying
/// `v` (the victim's address), alone and all together.
fn forgeries(v: &str) -> Vec<Vec<String>> {
    let single = [
        format!("X-Forwarded-For: {v}"),
        format!("X-Forwarded-For: {v}, {ATTACKER_IP}"),
        format!("Forwarded: for={v}"),
        format!("Forwarded: for=\"{v}:4711\";host=169.254.169.254;proto=http"),
        format!("X-Real-IP: {v}"),
        format!("X-Client-IP: {v}"),
        format!("True-Client-IP: {v}"),
        format!("X-Original-Forwarded-For: {v}"),
        format!("X-Forwarded-Host: {v}"),
        format!("X-Forwarded-Server: {v}"),
    ];
    let mut all: Vec<Vec<String>> = single.iter().map(|h| vec![h.clone()]).collect();
    all.push(single.to_vec());
    all
}

/// A token request for Key Vault with `query` and `headers`, its `Host` being `host`.
fn head(host: &str, query: &str, headers: &[String]) -> String {
    let mut h = format!(
        "GET /metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fvault.azure.net{query} HTTP/1.1\r\nHost: {host}\r\nMetadata: true"
    );
    for x in headers {
        h.push_str("\r\n");
        h.push_str(x);
    }
    h
}

#[tokio::test]
async fn forged_forwarding_and_host_headers_never_get_a_victims_identity() {
    let site = Site::start("spoof-headers", NODE, &["victim", "attacker"]).await;
    let node = site.node.clone();
    for (name, ip) in [("victim", VICTIM_IP), ("attacker", ATTACKER_IP)] {
        site.run_pod(
            name,
            &node,
            serde_json::json!({"aadpodidbinding": name}),
            ip,
            serde_json::json!({}),
        )
        .await;
    }
    // Both pods are served their own identity from their own address: the victim's identity
    // is there to be taken.
    for (name, ip) in [("victim", VICTIM_IP), ("attacker", ATTACKER_IP)] {
        site.ask_until(ip, "", |s, b| {
            s == 200 && site.holder(b).as_deref() == Some(name)
        })
        .await;
    }

    let victim = site.client_id("victim").to_owned();
    let mut checked = 0;
    for headers in forgeries(VICTIM_IP) {
        for host in ["169.254.169.254", VICTIM_IP, &format!("{VICTIM_IP}:80")] {
            // Unnamed: the attacker's own identity.
            let (status, body) = raw(site.agent, ATTACKER_IP, &head(host, "", &headers)).await;
            assert_eq!(
                (status, site.holder(&body).as_deref()),
                (200, Some("attacker")),
                "Host {host}, {headers:?}: {body}"
            );
            // Naming the victim's identity: refused as not bound.
            let (status, body) = raw(
                site.agent,
                ATTACKER_IP,
                &head(host, &format!("&client_id={victim}"), &headers),
            )
            .await;
            assert_eq!(status, 403, "Host {host}, {headers:?}: {body}");
            assert!(
                body.contains(&format!(
                    "the requested identity is not bound to pod {}/attacker",
                    site.namespace
                )),
                "Host {host}, {headers:?}: {body}"
            );
            // From an address that is no pod: no pod at all.
            let (status, body) = raw(site.agent, STRANGER_IP, &head(host, "", &headers)).await;
            assert_eq!(
                (status, body.as_str()),
                (
                    403,
                    format!("no pod on this node has IP {STRANGER_IP}\n").as_str()
                ),
                "Host {host}, {headers:?}"
            );
            checked += 3;
        }
    }

    // The legacy host API names the pod in headers, but only for callers at 127.0.0.1 (the
    // node itself); a pod forging that address in headers is refused.
    for headers in forgeries("127.0.0.1") {
        let mut h = format!(
            "GET /host/token/?resource=https%3A%2F%2Fvault.azure.net HTTP/1.1\r\nHost: 127.0.0.1\r\npodns: {}\r\npodname: victim",
            site.namespace
        );
        for x in &headers {
            h.push_str("\r\n");
            h.push_str(x);
        }
        let (status, body) = raw(site.agent, ATTACKER_IP, &h).await;
        assert_eq!(
            (status, body.as_str()),
            (500, "request remote address is not from a host\n"),
            "{headers:?}"
        );
        checked += 1;
    }
    eprintln!("forged-header requests refused or served as the attacker: {checked}");
}
