//! deploy/manifests/podid-nmi.yaml: it applies to a real API server, its arguments are flags the agent
//! accepts (as are the original's manifest and chart arguments, for a swap without manifest
//! changes), and its ServiceAccount's ClusterRole is enough for the agent — and no more: the
//! agent runs here with exactly that account's permissions (impersonated) and the DaemonSet's
//! arguments (standard mode, as shipped) and serves tokens.

use std::net::SocketAddr;

use clap::Parser;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use podid_azure_emulator::{Emulator, Settings};
use podid_crds::policy::Mode;
use podid_nmi::config::Flags;
use podid_nmi::server::ServerConfig;
use podid_testkit::{Cluster, NodePool};
use serde::Deserialize;
use serde_json::json;

mod live;
use live::{call, claims, run_pods};

const MANIFEST: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../deploy/manifests/podid-nmi.yaml"
);
const ORIGINAL: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/fixtures/original-deployment-args.yaml"
);

fn documents() -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(MANIFEST).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde_yaml::from_value(serde_yaml::Value::deserialize(d).unwrap()).unwrap())
        .collect()
}

fn daemonset() -> DaemonSet {
    documents()
        .into_iter()
        .find(|d| d["kind"] == "DaemonSet")
        .map(|d| serde_json::from_value(d).unwrap())
        .expect("a DaemonSet")
}

fn daemonset_args() -> Vec<String> {
    daemonset().spec.unwrap().template.spec.unwrap().containers[0]
        .args
        .clone()
        .unwrap()
}

/// The swap runs podid-nmi beside the original NMI on every node (both `hostNetwork`): its
/// ports and its iptables chain must be none of those the original's manifest uses, or one of
/// the two cannot start, or both rewrite one chain.
#[test]
fn the_daemonset_runs_beside_the_originals() {
    let args: Vec<String> = std::iter::once("podid-nmi".to_owned())
        .chain(
            daemonset_args()
                .into_iter()
                .map(|a| a.replace("$(NODE_NAME)", "aks-nodepool1-0")),
        )
        .collect();
    let flags = Flags::try_parse_from(&args).unwrap();
    // The original's deploy/infra manifest (v1.8.17): --http-probe-port=8085 and the defaults
    // --nmi-port=2579, --prometheus-port=9090, chain aad-metadata.
    for port in [flags.port, flags.http_probe_port, flags.prometheus_port] {
        assert!(
            ![2579, 8085, 9090].contains(&port),
            "port {port} is the original's"
        );
    }
    assert_ne!(flags.port, flags.http_probe_port);
    assert_ne!(flags.port, flags.prometheus_port);
    assert_ne!(flags.http_probe_port, flags.prometheus_port);
    assert_ne!(flags.iptables_chain, podid_nmi::iptables::ORIGINAL_CHAIN);
    assert!(
        !flags.remove_iptables_on_exit,
        "a rolling update must leave the rules"
    );
}

/// A node pool the DaemonSet skipped would leave its pods without interception: it must
/// tolerate every taint, as the original's NMI does, and run on Linux nodes only.
#[test]
fn the_daemonset_runs_on_every_linux_node_tainted_or_not() {
    let spec = daemonset().spec.unwrap().template.spec.unwrap();
    let tolerations = spec.tolerations.unwrap_or_default();
    assert!(
        tolerations
            .iter()
            .any(|t| t.operator.as_deref() == Some("Exists")
                && t.key.is_none()
                && t.effect.is_none()),
        "{tolerations:?}"
    );
    assert_eq!(
        spec.node_selector
            .unwrap_or_default()
            .get("kubernetes.io/os")
            .map(String::as_str),
        Some("linux")
    );
}

#[test]
fn the_daemonset_arguments_and_the_originals_are_flags_the_agent_accepts() {
    let ds = daemonset();
    let c = &ds.spec.unwrap().template.spec.unwrap().containers[0];
    let args: Vec<String> = std::iter::once("podid-nmi".to_owned())
        .chain(
            c.args
                .clone()
                .unwrap()
                .into_iter()
                .map(|a| a.replace("$(NODE_NAME)", "aks-nodepool1-0")),
        )
        .collect();
    let flags = Flags::try_parse_from(&args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert_eq!(flags.node, "aks-nodepool1-0");
    assert_eq!(flags.http_probe_port, 8086);
    let probe = c
        .liveness_probe
        .as_ref()
        .unwrap()
        .http_get
        .as_ref()
        .unwrap();
    assert_eq!(
        probe.port,
        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(8086),
        "the probe asks the port the agent serves /healthz on"
    );

    // The original's own manifests (tests/fixtures/original-deployment-args.yaml): its
    // arguments as the kubelet expands them; its liveness probe asks the port they set.
    let facts: serde_json::Value =
        serde_yaml::from_str(&std::fs::read_to_string(ORIGINAL).unwrap()).unwrap();
    let nmi = &facts["nmi"];
    let probe = nmi["livenessProbe"]["port"].as_u64().unwrap();
    for c in nmi["containers"].as_array().unwrap() {
        let args: Vec<String> = std::iter::once("nmi".to_owned())
            .chain(c["args"].as_array().unwrap().iter().map(|a| {
                a.as_str()
                    .unwrap()
                    .replace("$(NODE_NAME)", "aks-nodepool1-0")
            }))
            .collect();
        let flags = Flags::try_parse_from(&args)
            .unwrap_or_else(|e| panic!("{}: {args:?}: {e}", c["manifest"]));
        assert_eq!(flags.node, "aks-nodepool1-0");
        assert_eq!(u64::from(flags.http_probe_port), probe, "{}", c["manifest"]);
    }
    // Every flag the original's Helm chart can pass (v1.8.17).
    let chart = [
        "nmi",
        "--node=aks-nodepool1-0",
        "--host-ip=10.240.0.4",
        "--log-format=json",
        "-v=2",
        "--logtostderr",
        "--ipt-update-interval-sec=60",
        "--operation-mode=managed",
        "--forceNamespaced=true",
        "--MICNamespace=kube-system",
        "--retry-attempts-for-created=16",
        "--retry-attempts-for-assigned=4",
        "--find-identity-retry-interval=5",
        "--enableScaleFeatures=true",
        "--block-instance-metadata=false",
        "--metadata-header-required=true",
        "--http-probe-port=8085",
        "--prometheus-port=9090",
        "--allow-network-plugin-kubenet=false",
        "--kubelet-config=/etc/default/kubelet",
        "--set-retry-after-header=false",
        "--enable-conntrack-deletion=false",
        "--custom-user-agent=aks",
    ];
    let flags = Flags::try_parse_from(chart).unwrap_or_else(|e| panic!("{chart:?}: {e}"));
    assert_eq!(flags.node, "aks-nodepool1-0");
    let flags = Flags::try_parse_from(["nmi", "--node=n", "-v=5"]).unwrap();
    assert_eq!(flags.log.level(), "debug");
}

#[tokio::test]
async fn the_manifest_applies_and_its_account_is_all_the_agent_needs() {
    let cluster = Cluster::shared_async().await;
    let out = cluster
        .kubectl_apply(std::path::Path::new(MANIFEST), None)
        .expect("kubectl apply deploy/manifests/podid-nmi.yaml");
    assert!(out.contains("daemonset.apps/podid-nmi"), "{out}");

    // What the account may not do.
    cluster.assert_cannot(
        "system:serviceaccount:default:podid-nmi",
        &[
            ("create", "pods"),
            ("update", "azureassignedidentities.aadpodidentity.k8s.io"),
            ("delete", "secrets"),
            ("list", "secrets"),
            ("watch", "secrets"),
            ("list", "nodes"),
            ("create", "events"),
        ],
    );

    // The agent itself, as that account: a user-assigned identity and a service principal.
    let ns = cluster.namespace("nmi-deploy").await;
    let admin = ns.client.clone();
    let pool = NodePool::aks("nmidep", 1);
    cluster.add_nodes(&pool).await.expect("fake node ready");
    let node = pool.node_name(0);
    let emu = Emulator::start(Settings::default()).await.unwrap();
    let vmss = emu.add_scale_set(&pool.resource_group, &pool.scale_set, 1);
    let ua = emu.add_identity("rg", "dep-ua");
    emu.preassign(&vmss, &ua.id);
    let sp_client = "5e1f0000-0000-0000-0000-0000000de910";
    emu.add_app(sp_client, Some("s3cret"), None);
    let sp = live::sp_spec(&admin, &ns.name, &emu, sp_client, "sp-secret", "s3cret").await;
    live::bound_identity(&admin, &ns.name, "sp", sp, "sp").await;
    live::bound_identity(
        &admin,
        &ns.name,
        "ua",
        json!({"type": 0, "resourceID": ua.id, "clientID": ua.client_id}),
        "ua",
    )
    .await;
    let pods: Api<Pod> = Api::namespaced(admin.clone(), &ns.name);
    let ips = run_pods(
        &pods,
        &node,
        &[
            ("pod-ua", json!({"aadpodidbinding": "ua"})),
            ("pod-sp", json!({"aadpodidbinding": "sp"})),
        ],
    )
    .await;

    // The DaemonSet runs the agent in standard mode: the records the operator would write for
    // these pods, Assigned.
    let assigned: Api<podid_crds::AzureAssignedIdentity> = Api::namespaced(admin.clone(), &ns.name);
    for (pod, identity) in [("pod-ua", "ua"), ("pod-sp", "sp")] {
        let id = Api::<podid_crds::AzureIdentity>::namespaced(admin.clone(), &ns.name)
            .get(identity)
            .await
            .unwrap();
        let record: podid_crds::AzureAssignedIdentity = live::obj(json!({
            "apiVersion": "aadpodidentity.k8s.io/v1", "kind": "AzureAssignedIdentity",
            "metadata": {"name": format!("{pod}-{}-{identity}", ns.name), "labels": {"nodename": node}},
            "spec": {"pod": pod, "podNamespace": ns.name, "nodename": node,
                     "azureIdentityRef": serde_json::to_value(podid_crds::EmbeddedIdentity::from(&id)).unwrap()},
            "status": {"status": "Assigned"}
        }));
        assigned
            .create(&kube::api::PostParams::default(), &record)
            .await
            .unwrap();
    }

    let as_agent = cluster
        .client_as("system:serviceaccount:default:podid-nmi")
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], listener.local_addr().unwrap().port()));
    // Everything as the DaemonSet's arguments make it (standard mode, --watch-secrets=false,
    // ...); only where IMDS is differs.
    let args = daemonset_args();
    let args: Vec<&str> = args
        .iter()
        .map(String::as_str)
        .filter(|a| !a.starts_with("--node"))
        .collect();
    let flags = Flags::try_parse_from(
        ["podid-nmi", "--node=n"]
            .into_iter()
            .chain(args.iter().copied()),
    )
    .unwrap();
    assert_eq!(flags.operation_mode, Mode::Standard, "the DaemonSet's mode");
    let server = ServerConfig {
        imds_endpoint: url::Url::parse(&emu.imds_endpoint(&format!("{}_0", pool.scale_set)))
            .unwrap(),
        ..flags.server_config()
    };
    let (_agent, metrics) = live::start_agent_with_flags(
        listener,
        as_agent,
        &node,
        server,
        &emu.arm_endpoint(),
        &args,
    )
    .await;
    for (pod, appid) in [("pod-ua", ua.client_id.as_str()), ("pod-sp", sp_client)] {
        let (status, body) = call(addr, ips[pod], "").await;
        assert_eq!(status, 200, "{pod}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(claims(v["access_token"].as_str().unwrap())["appid"], appid);
    }
    assert!(
        !metrics
            .render()
            .contains("aadpodidentity_kubernetes_api_operations_errors_count{"),
        "no API call was refused: {}",
        metrics.render()
    );
}
