//! The iptables rules in network namespaces this test creates (never the host's own tables):
//! a "node" namespace running the rules and a stand-in agent on 127.0.0.1, and a "pod"
//! namespace behind a veth pair. Skipped, with a message, where `ip netns add` is not allowed.

use std::process::Command;

use podid_nmi::iptables::DEFAULT_CHAIN as CHAIN;

mod live;
use live::netns::{NodeNetns, agent_rules};
use live::{obj, sh};

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
    let Some(net) = NodeNetns::create("iptables_netns::r", "r", 1) else {
        return;
    };
    let (node, podns) = (&net.node, &net.pods[0]);
    let ipt = net.iptables();
    let spec = agent_rules();
    assert!(
        ipt.ensure(&spec).await.unwrap(),
        "first run writes the rules"
    );
    let listing = net.nat_listing();
    assert!(
        listing.contains("-A PREROUTING -j podid-metadata"),
        "{listing}"
    );
    assert!(listing.contains("-A podid-metadata ! -s 127.0.0.1/32 -d 169.254.169.254/32 -p tcp -m tcp --dport 80 -j DNAT --to-destination 127.0.0.1:2579"), "{listing}");
    assert!(
        !ipt.ensure(&spec).await.unwrap(),
        "current rules are left alone"
    );

    // Someone flushes the chain: the next reconcile restores it, without a second jump.
    sh(&[
        "ip", "netns", "exec", node, "iptables", "-w", "-t", "nat", "-F", CHAIN,
    ]);
    assert!(ipt.ensure(&spec).await.unwrap());
    let listing = net.nat_listing();
    assert_eq!(
        listing.matches("-A PREROUTING -j podid-metadata").count(),
        1,
        "{listing}"
    );

    // A stand-in agent on the node's 127.0.0.1:2579; a pod calls IMDS's address.
    let mut server = tokio::process::Command::new("ip")
        .args(["netns", "exec", node, "python3", "-c", SERVER, "2579"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    {
        use tokio::io::AsyncBufReadExt;
        let mut lines = tokio::io::BufReader::new(server.stdout.take().unwrap()).lines();
        assert_eq!(lines.next_line().await.unwrap().as_deref(), Some("ready"));
    }
    let out = sh(&["ip", "netns", "exec", podns, "python3", "-c", CLIENT]);
    let seen = String::from_utf8_lossy(&out.stdout);
    assert!(
        seen.starts_with("agent saw 10.200.0.2 /metadata/identity/oauth2/token?resource=x"),
        "the pod's IMDS call reaches the agent with the pod's source address: {seen}"
    );

    ipt.cleanup(CHAIN).await.unwrap();
    let listing = net.nat_listing();
    assert!(!listing.contains(CHAIN), "{listing}");
    // Cleaning up twice is harmless.
    ipt.cleanup(CHAIN).await.unwrap();
    let _ = server.kill().await;
}

/// A pod behind the real thing: a "pod" network namespace whose calls to 169.254.169.254 the
/// node namespace's rules send to podid-nmi (in-process, managed mode), which knows the caller
/// as a pod on the real API server by its address (10.200.0.2) and answers from the emulator's
/// IMDS, where the identity `ident` is on the node's scale set. `None` where namespaces cannot
/// be made.
struct PodBehindAgent {
    net: NodeNetns,
    ident: podid_azure_emulator::state::Identity,
    emu: podid_azure_emulator::Emulator,
    /// The node's scale set in the emulator.
    vmss: String,
    _agent: tokio_util::sync::DropGuard,
}

async fn pod_behind_agent(tag: &str) -> Option<PodBehindAgent> {
    pod_behind_agent_serving(tag, None).await
}

/// [`pod_behind_agent`]; with `serving` (e.g. `federated`), the pod's binding carries that
/// serving, the agent runs with `--federated`, the identity is on no scale set, and the
/// Workload ID side is in place as the bridge leaves it (credential for the pod's ServiceAccount
/// `demo`, record proven).
async fn pod_behind_agent_serving(tag: &str, serving: Option<&str>) -> Option<PodBehindAgent> {
    use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
    use kube::api::{Api, Patch, PatchParams, PostParams};

    use podid_crds::policy::Mode;
    use podid_nmi::server::ServerConfig;
    use serde_json::json;

    let net = NodeNetns::create(&format!("iptables_netns::{tag}"), tag, 1)?;
    assert!(net.iptables().ensure(&agent_rules()).await.unwrap());
    let listener = net.listen_on_node("127.0.0.1:2579");

    let emu = podid_azure_emulator::Emulator::start(podid_azure_emulator::Settings::default())
        .await
        .unwrap();
    let vmss = emu.add_scale_set("MC_demo", "aks-demo-1-vmss", 1);
    let ident = emu.add_identity("rg", &format!("demo-{tag}"));
    if serving.is_none() {
        emu.preassign(&vmss, &ident.id);
    }

    let cluster = podid_testkit::Cluster::shared_async().await;
    let ns = cluster.namespace(&format!("demo-{tag}")).await;
    let client = ns.client.clone();
    let node = format!("aks-demo-{tag}-vmss000000");
    live::bound_identity(
        &client,
        &ns.name,
        "demo",
        json!({"type": 0, "resourceID": ident.id, "clientID": ident.client_id}),
        "demo",
    )
    .await;
    Api::<ServiceAccount>::namespaced(client.clone(), &ns.name)
        .create(
            &PostParams::default(),
            &obj(json!({"metadata": {"name": "demo"}})),
        )
        .await
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    pods.create(
        &PostParams::default(),
        &obj(json!({
            "metadata": {"name": "demo", "labels": {"aadpodidbinding": "demo"}},
            "spec": {"nodeName": node, "serviceAccountName": "demo", "automountServiceAccountToken": false,
                     "containers": [{"name": "demo", "image": "mcr.microsoft.com/oss/azure/aad-pod-identity/demo:v1.8.17"}]}
        })),
    )
    .await
    .unwrap();
    // No kubelet runs this node: the pod's status says what one would (its address is the pod
    // namespace's).
    pods.patch_status(
        "demo",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {
            "phase": "Running", "podIP": "10.200.0.2", "podIPs": [{"ip": "10.200.0.2"}]
        }})),
    )
    .await
    .unwrap();
    let mut flags = vec![];
    if let Some(serving) = serving {
        emu.trust_issuer_ca(cluster.ca_pem());
        Api::<podid_crds::AzureIdentityBinding>::namespaced(client.clone(), &ns.name)
            .patch(
                "bind-demo",
                &PatchParams::default(),
                &Patch::Merge(
                    json!({"metadata": {"annotations": {podid_crds::SERVING_ANNOTATION: serving}}}),
                ),
            )
            .await
            .unwrap();
        live::bridged(
            &client,
            cluster,
            &emu,
            &ident,
            (&ns.name, "Pod", "demo"),
            "demo",
        )
        .await;
        flags.push("--federated");
    }
    let config = ServerConfig {
        mode: Mode::Managed,
        force_namespaced: true,
        imds_endpoint: url::Url::parse(&emu.imds_endpoint("aks-demo-1-vmss_0")).unwrap(),
        ..Default::default()
    };
    let (agent, _) =
        live::start_agent_with_flags(listener, client, &node, config, &emu.arm_endpoint(), &flags)
            .await;
    Some(PodBehindAgent {
        net,
        ident,
        emu,
        vmss,
        _agent: agent,
    })
}

/// A command run as the pod, with no Azure or MSI environment of the test's.
fn in_pod(pod: &PodBehindAgent, program: &std::path::Path) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new("ip");
    cmd.args(["netns", "exec", &pod.net.pods[0]]).arg(program);
    podid_testkit::sdk::clear_azure_env(&mut cmd);
    cmd.kill_on_drop(true);
    cmd
}

/// The original project's demo program (aad-pod-identity v1.8.17's `cmd/demo`, built by
/// tests/peers/build.sh), run inside the pod namespace, asks 169.254.169.254 for
/// `/metadata/instance` and for a token of its user-assigned identity, and logs that it got it.
#[tokio::test]
async fn the_original_demo_in_a_pod_namespace_gets_a_token_through_the_metadata_address() {
    let Some(pod) = pod_behind_agent("d").await else {
        return;
    };
    let claims = demo_token(&pod).await;
    assert_eq!(claims["appid"], pod.ident.client_id.as_str(), "{claims}");
    assert_eq!(claims["aud"], "https://management.azure.com/", "{claims}");
}

/// Runs the original demo program as the pod until it logs its token; the token's claims.
async fn demo_token(pod: &PodBehindAgent) -> serde_json::Value {
    use tokio::io::AsyncBufReadExt;
    let demo = podid_testkit::peer_binary("demo").expect("the original demo program");
    let ident = &pod.ident;
    let mut child = in_pod(pod, &demo)
        .args(["--identity-client-id", &ident.client_id, "--period", "1h"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let mut log = Vec::new();
    let mut token = None;
    let read = async {
        while let Some(line) = lines.next_line().await.unwrap() {
            log.push(line.clone());
            if let Some(rest) = line.split("Try decoding your token ").nth(1) {
                token = rest.split_whitespace().next().map(str::to_owned);
                return;
            }
            if line.contains("Failed to acquire token") {
                return;
            }
        }
    };
    let finished = tokio::time::timeout(std::time::Duration::from_secs(90), read).await;
    let _ = child.kill().await;
    let log = log.join("\n");
    assert!(
        finished.is_ok(),
        "the demo logged no outcome in 90 s:\n{log}"
    );
    assert!(
        log.contains(&format!(
            "successfully acquired a service principal token from IMDS using a user-assigned identity ({})",
            ident.client_id
        )),
        "{log}"
    );
    assert!(
        log.contains(r#"curl -H Metadata:true "http://169.254.169.254/metadata/instance?api-version=2017-08-01": {"#),
        "the instance metadata call is passed through to IMDS:\n{log}"
    );
    live::claims(&token.expect("the demo printed its token"))
}

/// Python azure-identity's ManagedIdentityCredential, unchanged and unconfigured, in the pod
/// namespace: it calls 169.254.169.254 like on any Azure VM, with and without a client ID.
#[tokio::test]
async fn python_azure_identity_unchanged_in_a_pod_namespace_gets_the_pods_token() {
    let Some(pod) = pod_behind_agent("p").await else {
        return;
    };
    for c in python_tokens(&pod).await {
        assert_eq!(c["appid"], pod.ident.client_id.as_str(), "{c}");
        assert_eq!(c["aud"], "https://vault.azure.net", "{c}");
    }
}

/// Python's ManagedIdentityCredential in the pod, without and with the client ID: the claims
/// of the two tokens it gets.
async fn python_tokens(pod: &PodBehindAgent) -> Vec<serde_json::Value> {
    let venv = podid_testkit::sdk::python_venv();
    const SCRIPT: &str = r#"
import sys
from azure.identity import ManagedIdentityCredential
for kw in ({}, {"client_id": sys.argv[1]}):
    print(ManagedIdentityCredential(**kw).get_token("https://vault.azure.net/.default").token, flush=True)
"#;
    let out = in_pod(pod, &venv.join("bin/python"))
        .args(["-c", SCRIPT, &pod.ident.client_id])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tokens: Vec<_> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(live::claims)
        .collect();
    assert_eq!(tokens.len(), 2);
    tokens
}

/// Federated serving: the same unchanged programs calling 169.254.169.254, the binding annotated
/// `federated`, the identity on no scale set: the agent mints a token for the pod's
/// ServiceAccount and exchanges it at Entra. No IMDS token call, no ARM write.
#[tokio::test]
async fn federated_the_demo_and_python_get_tokens_by_exchange_with_no_identity_on_any_scale_set() {
    let Some(pod) = pod_behind_agent_serving("f", Some("federated")).await else {
        return;
    };
    let demo = demo_token(&pod).await;
    assert_eq!(live::token_client(&demo), pod.ident.client_id, "{demo}");
    assert_eq!(demo["aud"], "https://management.azure.com/", "{demo}");
    for c in python_tokens(&pod).await {
        assert_eq!(live::token_client(&c), pod.ident.client_id, "{c}");
        assert_eq!(c["aud"], "https://vault.azure.net", "{c}");
    }
    let calls = pod.emu.calls();
    let exchanges: u64 = calls
        .iter()
        .filter(|(route, _)| route.contains("token") && !route.contains("imds"))
        .map(|(_, n)| n)
        .sum();
    assert!(exchanges >= 2, "two resources exchanged: {calls:?}");
    assert!(
        !calls.keys().any(|r| r.contains("imds.token")),
        "no token from IMDS: {calls:?}"
    );
    assert!(
        !calls
            .keys()
            .any(|r| r.starts_with("PATCH") || r.starts_with("PUT")),
        "no ARM write: {calls:?}"
    );
    assert!(
        pod.emu.assigned_identities(&pod.vmss).is_empty(),
        "no identity on the scale set"
    );
}

/// The Rust SDK's IMDS credential (azure_identity 0.21's `VirtualMachineManagedIdentityCredential`,
/// its only public one; it names no identity, so the agent serves the pod's only one), unchanged,
/// on a thread inside the pod namespace.
#[tokio::test]
async fn rust_azure_identity_unchanged_in_a_pod_namespace_gets_the_pods_token() {
    let Some(pod) = pod_behind_agent("rs").await else {
        return;
    };
    let tokens = pod
        .net
        .in_pod(0, || async {
            use azure_core::auth::TokenCredential;
            let system = azure_identity::VirtualMachineManagedIdentityCredential::new(
                azure_identity::TokenCredentialOptions::default(),
            );
            let mut out = Vec::new();
            for scope in [
                "https://storage.azure.com/.default",
                "https://storage.azure.com/.default",
            ] {
                let t = system.get_token(&[scope]).await.unwrap();
                out.push(t.token.secret().to_owned());
            }
            out
        })
        .await;
    for t in tokens {
        let c = live::claims(&t);
        assert_eq!(live::token_client(&c), pod.ident.client_id, "{c}");
        assert_eq!(c["aud"], "https://storage.azure.com", "{c}");
    }
}

/// An HTTP/1.1 keep-alive server on `addr:port` answering `<name> saw <client> <path>`.
const KEEPALIVE_SERVER: &str = r#"
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = (sys.argv[3] + " saw " + self.client_address[0] + " " + self.path).encode()
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers(); self.wfile.write(body)
    def log_message(self, *a): pass
s = http.server.ThreadingHTTPServer((sys.argv[1], int(sys.argv[2])), H)
print("ready", flush=True)
s.serve_forever()
"#;

/// A pod that keeps one connection to IMDS open: one request per line on stdin
/// (`same` on the open connection, `new` on a fresh one), one answer line each.
const KEEPALIVE_CLIENT: &str = r#"
import http.client, sys
def get(c):
    c.request("GET", "/metadata/identity/oauth2/token?resource=x"); return c.getresponse().read().decode()
kept = http.client.HTTPConnection("169.254.169.254", 80, timeout=5)
for line in sys.stdin:
    c = kept if line.strip() == "same" else http.client.HTTPConnection("169.254.169.254", 80, timeout=5)
    try:
        print(get(c), flush=True)
    except Exception as e:
        print("error", type(e).__name__, flush=True)
"#;

/// `--enable-conntrack-deletion`: a connection a pod opened to IMDS before the rules existed
/// keeps reaching IMDS past them (conntrack remembers it un-NATed) until the agent deletes the
/// tracked connections; after that the pod's requests reach the agent.
#[tokio::test]
async fn conntrack_deletion_stops_connections_opened_before_the_rules_from_bypassing_the_agent() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let Some(net) = NodeNetns::create("iptables_netns::c", "c", 1) else {
        return;
    };
    if Command::new("conntrack").arg("--version").output().is_err() {
        podid_testkit::prereq::skip(
            "iptables_netns::conntrack_deletion",
            "the conntrack tool is missing: apt-get install conntrack (.ci/run installs it)",
        );
        return;
    }
    // As on a real node (kube-proxy's rules), connection tracking is already on in the node
    // namespace before any pod connects; a fresh namespace turns it on only with a rule that
    // needs it.
    sh(&[
        "ip",
        "netns",
        "exec",
        &net.node,
        "iptables",
        "-w",
        "-A",
        "INPUT",
        "-m",
        "conntrack",
        "--ctstate",
        "ESTABLISHED,RELATED",
        "-j",
        "ACCEPT",
    ]);
    // A stand-in IMDS on the node at the metadata address, and a stand-in agent.
    sh(&[
        "ip",
        "netns",
        "exec",
        &net.node,
        "ip",
        "addr",
        "add",
        "169.254.169.254/32",
        "dev",
        "lo",
    ]);
    let mut servers = Vec::new();
    for (addr, port, name) in [
        ("169.254.169.254", "80", "imds"),
        ("127.0.0.1", "2579", "agent"),
    ] {
        let mut s = tokio::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                &net.node,
                "python3",
                "-c",
                KEEPALIVE_SERVER,
            ])
            .args([addr, port, name])
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = tokio::io::BufReader::new(s.stdout.take().unwrap()).lines();
        assert_eq!(lines.next_line().await.unwrap().as_deref(), Some("ready"));
        servers.push(s);
    }
    let mut pod = tokio::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &net.pods[0],
            "python3",
            "-c",
            KEEPALIVE_CLIENT,
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut to_pod = pod.stdin.take().unwrap();
    let mut from_pod = tokio::io::BufReader::new(pod.stdout.take().unwrap()).lines();
    let mut ask = async |how: &str| {
        to_pod
            .write_all(format!("{how}\n").as_bytes())
            .await
            .unwrap();
        from_pod.next_line().await.unwrap().unwrap()
    };

    let imds = "imds saw 10.200.0.2 /metadata/identity/oauth2/token?resource=x";
    let agent = "agent saw 10.200.0.2 /metadata/identity/oauth2/token?resource=x";
    assert_eq!(ask("same").await, imds, "before the rules, IMDS answers");
    let ipt = net.iptables();
    assert!(ipt.ensure(&agent_rules()).await.unwrap());
    assert_eq!(ask("new").await, agent, "a new connection meets the rules");
    assert_eq!(
        ask("same").await,
        imds,
        "the connection opened before the rules still bypasses the agent"
    );
    let deleted = ipt
        .delete_conntrack_entries("169.254.169.254".parse().unwrap(), 80)
        .await
        .unwrap();
    assert!(deleted >= 1, "the tracked IMDS connection is deleted");
    assert_ne!(
        ask("same").await,
        imds,
        "the old connection no longer reaches IMDS"
    );
    assert_eq!(ask("new").await, agent);
    assert_eq!(
        ipt.delete_conntrack_entries("169.254.169.254".parse().unwrap(), 81)
            .await
            .unwrap(),
        0,
        "nothing to delete is not an error"
    );
}
