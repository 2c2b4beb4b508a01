//! The iptables rules in network namespaces this test creates (never the host's own tables):
//! a "node" namespace running the rules and a stand-in agent on 127.0.0.1, and a "pod"
//! namespace behind a veth pair. Skipped, with a message, where `ip netns add` is not allowed.

use std::process::Command;

use podid_nmi::iptables::{CHAIN, Iptables, RuleSpec};

struct Netns(Vec<String>);

impl Drop for Netns {
    fn drop(&mut self) {
        for ns in &self.0 {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn sh(args: &[&str]) -> std::process::Output {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn nat_listing(ns: &str) -> String {
    String::from_utf8(
        sh(&[
            "ip", "netns", "exec", ns, "iptables", "-w", "-t", "nat", "-S",
        ])
        .stdout,
    )
    .unwrap()
}

const SERVER: &str = r#"
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = ("agent saw " + self.client_address[0] + " " + self.path).encode()
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers(); self.wfile.write(body)
    def log_message(self, *a): pass
s = http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H)
print("ready", flush=True)
s.serve_forever()
"#;

const CLIENT: &str = r#"
import urllib.request, sys
try:
    print(urllib.request.urlopen("http://169.254.169.254/metadata/identity/oauth2/token?resource=x", timeout=10).read().decode())
except Exception as e:
    print("error:", e)
"#;

#[tokio::test]
async fn rules_redirect_pod_traffic_to_the_agent_and_are_removed_on_cleanup() {
    let id = std::process::id();
    let (node, podns) = (
        format!("podid-nmi-{id}-node"),
        format!("podid-nmi-{id}-pod"),
    );
    if Command::new("ip")
        .args(["netns", "add", &node])
        .status()
        .map(|s| !s.success())
        .unwrap_or(true)
    {
        eprintln!("skipping: `ip netns add` is not permitted here");
        return;
    }
    let _guard = Netns(vec![node.clone(), podns.clone()]);
    sh(&["ip", "netns", "add", &podns]);
    let (vn, vp) = (format!("pn{id}"), format!("pp{id}"));
    let (vn, vp) = (&vn[..vn.len().min(15)], &vp[..vp.len().min(15)]);
    sh(&["ip", "link", "add", vn, "type", "veth", "peer", "name", vp]);
    sh(&["ip", "link", "set", vn, "netns", &node]);
    sh(&["ip", "link", "set", vp, "netns", &podns]);
    for (ns, dev, addr) in [(&node, vn, "10.200.0.1/24"), (&podns, vp, "10.200.0.2/24")] {
        sh(&[
            "ip", "netns", "exec", ns, "ip", "addr", "add", addr, "dev", dev,
        ]);
        sh(&["ip", "netns", "exec", ns, "ip", "link", "set", dev, "up"]);
        sh(&["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"]);
    }
    sh(&[
        "ip",
        "netns",
        "exec",
        &podns,
        "ip",
        "route",
        "add",
        "default",
        "via",
        "10.200.0.1",
    ]);
    // DNAT to 127.0.0.1 from PREROUTING needs route_localnet (set by kube-proxy on real nodes).
    sh(&[
        "ip",
        "netns",
        "exec",
        &node,
        "sysctl",
        "-qw",
        "net.ipv4.conf.all.route_localnet=1",
    ]);
    sh(&[
        "ip",
        "netns",
        "exec",
        &node,
        "sysctl",
        "-qw",
        &format!("net.ipv4.conf.{vn}.route_localnet=1"),
    ]);

    let ipt = Iptables {
        prefix: vec!["ip".into(), "netns".into(), "exec".into(), node.clone()],
    };
    let spec = RuleSpec {
        metadata_ip: "169.254.169.254".parse().unwrap(),
        metadata_port: 80,
        target_ip: "127.0.0.1".parse().unwrap(),
        target_port: 2579,
    };
    assert!(
        ipt.ensure(&spec).await.unwrap(),
        "first run writes the rules"
    );
    let listing = nat_listing(&node);
    assert!(
        listing.contains("-A PREROUTING -j aad-metadata"),
        "{listing}"
    );
    assert!(listing.contains("-A aad-metadata ! -s 127.0.0.1/32 -d 169.254.169.254/32 -p tcp -m tcp --dport 80 -j DNAT --to-destination 127.0.0.1:2579"), "{listing}");
    assert!(
        !ipt.ensure(&spec).await.unwrap(),
        "current rules are left alone"
    );

    // Someone flushes the chain: the next reconcile restores it, without a second jump.
    sh(&[
        "ip", "netns", "exec", &node, "iptables", "-w", "-t", "nat", "-F", CHAIN,
    ]);
    assert!(ipt.ensure(&spec).await.unwrap());
    let listing = nat_listing(&node);
    assert_eq!(
        listing.matches("-A PREROUTING -j aad-metadata").count(),
        1,
        "{listing}"
    );

    // A stand-in agent on the node's 127.0.0.1:2579; a pod calls IMDS's address.
    let mut server = tokio::process::Command::new("ip")
        .args(["netns", "exec", &node, "python3", "-c", SERVER, "2579"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    {
        use tokio::io::AsyncBufReadExt;
        let mut lines = tokio::io::BufReader::new(server.stdout.take().unwrap()).lines();
        assert_eq!(lines.next_line().await.unwrap().as_deref(), Some("ready"));
    }
    let out = sh(&["ip", "netns", "exec", &podns, "python3", "-c", CLIENT]);
    let seen = String::from_utf8_lossy(&out.stdout);
    assert!(
        seen.starts_with("agent saw 10.200.0.2 /metadata/identity/oauth2/token?resource=x"),
        "the pod's IMDS call reaches the agent with the pod's source address: {seen}"
    );

    ipt.cleanup().await.unwrap();
    let listing = nat_listing(&node);
    assert!(!listing.contains("aad-metadata"), "{listing}");
    // Cleaning up twice is harmless.
    ipt.cleanup().await.unwrap();
    let _ = server.kill().await;
}
