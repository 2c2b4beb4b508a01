//! The seed's flows end to end, the AKS add-on's way: `podid identity add` (with `--no-assign`:
//! podid-operator `--mode managed` puts the identities on the node pool), the original demo
//! program in a pod network namespace behind podid-nmi in managed mode gets a token; two
//! identities on one selector; an exception lets the pod's requests pass through to IMDS;
//! `podid identity delete` and the token is refused. Real API server, real iptables in network
//! namespaces the test creates, the Azure emulator.

#[path = "../../nmi/tests/live/mod.rs"]
mod live;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams, PostParams};
use podid_azure::{Arm, MsiCredentials};
use podid_azure_emulator::{Emulator, Settings};
use podid_cli::identity::{self, AddRequest, ExceptionVerb};
use podid_crds::AzureIdentity;
use podid_crds::policy::Mode;
use podid_nmi::server::ServerConfig;
use podid_operator::controller::LoopSettings;
use podid_operator::leader::{self, Election};
use podid_operator::managed::{ManagedOptions, ManagedPlanner};
use podid_operator::managed_run::{ManagedController, ManagedStores};
use podid_operator::metrics::Metrics;
use podid_testkit::builders::obj;
use podid_testkit::{Cluster, NodePool};
use serde_json::json;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use live::netns::{NodeNetns, agent_rules};

/// Runs the original demo program (aad-pod-identity v1.8.17's `cmd/demo`) as the pod, asking
/// for `client_id`'s token, until it logs an outcome: the token's claims, or the log.
async fn demo(net: &NodeNetns, client_id: &str) -> Result<serde_json::Value, String> {
    use tokio::io::AsyncBufReadExt;
    let program = podid_testkit::peer_binary("demo").expect("the original demo program");
    let mut cmd = tokio::process::Command::new("ip");
    cmd.args(["netns", "exec", &net.pods[0]]).arg(&program);
    podid_testkit::sdk::clear_azure_env(&mut cmd);
    let mut child = cmd
        .args(["--identity-client-id", client_id, "--period", "1h"])
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
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
    let finished = tokio::time::timeout(Duration::from_secs(90), read).await;
    let _ = child.kill().await;
    let log = log.join("\n");
    assert!(
        finished.is_ok(),
        "the demo logged no outcome in 90 s:\n{log}"
    );
    token.map(|t| live::claims(&t)).ok_or(log)
}

#[tokio::test]
async fn identity_add_demo_token_two_identities_exception_delete_refused() {
    let Some(net) = NodeNetns::create("managed_e2e", "e", 1) else {
        return;
    };
    podid_testkit::peer_binary("demo")
        .unwrap_or_else(|e| panic!("the end-to-end run needs the original demo: {e}"));
    assert!(net.iptables().ensure(&agent_rules()).await.unwrap());
    let listener = net.listen_on_node("127.0.0.1:2579");

    let cluster = Cluster::shared_async().await;
    let pool = NodePool::aks("e2e", 1);
    cluster.add_nodes(&pool).await.expect("fake node ready");
    let node = pool.node_name(0);
    let emu = Emulator::start(Settings::default()).await.unwrap();
    emu.add_app("operator", Some("pw"), None);
    let rg = pool.resource_group.clone();
    let vmss = emu.add_scale_set(&rg, &pool.scale_set, 1);
    let kubelet = emu.add_identity(&rg, "kubelet");
    emu.preassign(&vmss, &kubelet.id);
    let one = emu.add_identity("ids", "e2e-one");
    let two = emu.add_identity("ids", "e2e-two");
    let ns = cluster.namespace("e2e").await;
    let client = ns.client.clone();

    // Azure for the operator and the CLI: a service principal at the emulator.
    let http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(emu.ca_pem().as_bytes()).unwrap())
        .build()
        .unwrap();
    let credential = podid_azure::CredentialConfig::ClientSecret {
        authority_host: emu.authority_host(),
        tenant_id: emu.tenant_id(),
        client_id: "operator".into(),
        secret: "pw".into(),
    }
    .build(http.clone())
    .unwrap();
    let mut arm = Arm::new(&emu.arm_endpoint(), credential.clone(), http.clone());
    arm.poll_interval = Duration::from_millis(20);
    let cli_azure = identity::Azure {
        arm: arm.clone(),
        msi: MsiCredentials::new(
            &emu.arm_endpoint(),
            "https://management.azure.com",
            credential,
            http.clone(),
        )
        .unwrap(),
        subscription_id: emu.subscription_id(),
    };

    // podid-operator --mode managed, in-process.
    let shutdown = CancellationToken::new();
    let notify = Arc::new(Notify::new());
    let stores = ManagedStores::start(&client, notify.clone(), &shutdown);
    let mut controller = ManagedController::new(
        client.clone(),
        arm,
        ManagedPlanner::new(ManagedOptions::default()),
        stores,
        Metrics::new(),
        "e2e",
    );
    controller.configured_scope = Some((emu.subscription_id(), rg.clone()));
    let (may_write_tx, may_write) = watch::channel(false);
    let election = tokio::spawn(leader::run(
        client.clone(),
        Election {
            namespace: ns.name.clone(),
            name: "podid-operator".into(),
            identity: "e2e".into(),
            duration: Duration::from_secs(15),
            original_lock: None,
        },
        may_write_tx,
        shutdown.clone(),
    ));
    let settings = LoopSettings {
        debounce: Duration::from_millis(200),
        full_interval: Duration::from_secs(180),
        retry_base: Duration::from_millis(500),
    };
    let run = {
        let shutdown = shutdown.clone();
        tokio::spawn(async move { controller.run(notify, may_write, settings, shutdown).await })
    };

    // `podid identity add` twice, one selector; the node pool left to the operator.
    for (name, i) in [("one", &one), ("two", &two)] {
        let req = AddRequest {
            namespace: ns.name.clone(),
            name: name.into(),
            resource_id: i.id.clone(),
            selector: Some("demo".into()),
            no_role_assignment: true,
            no_assign: true,
            ..Default::default()
        };
        identity::run_add(&client, &cli_azure, &req, |_| {})
            .await
            .unwrap_or_else(|e| panic!("identity add {name}: {e}"));
    }

    // The demo pod, its address the pod namespace's. Its node is a name kwok does not manage
    // (kwok would give the pod an address of its own): podid-nmi runs for that name, while the
    // node pool's kwok node gives podid-operator the scale set the emulator's IMDS answers for.
    let node = format!("{node}-demo");
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    pods.create(
        &PostParams::default(),
        &obj(json!({
            "metadata": {"name": "demo", "labels": {"aadpodidbinding": "demo", "app": "demo"}},
            "spec": {"nodeName": node, "automountServiceAccountToken": false,
                     "containers": [{"name": "demo", "image": "mcr.microsoft.com/oss/azure/aad-pod-identity/demo:v1.8.17"}]}
        })),
    )
    .await
    .unwrap();
    pods.patch_status(
        "demo",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {
            "phase": "Running", "podIP": "10.200.0.2", "podIPs": [{"ip": "10.200.0.2"}]
        }})),
    )
    .await
    .unwrap();

    // podid-nmi in managed mode on the node.
    let config = ServerConfig {
        mode: Mode::Managed,
        imds_endpoint: url::Url::parse(&emu.imds_endpoint(&format!("{}_0", pool.scale_set)))
            .unwrap(),
        ..Default::default()
    };
    let (_agent, _) = live::start_agent_with_flags(
        listener,
        client.clone(),
        &node,
        config,
        &emu.arm_endpoint(),
        &[],
    )
    .await;

    // The operator puts both identities on the node pool.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while ![&one, &two].iter().all(|i| {
        emu.assigned_identities(&vmss)
            .contains(&i.id.to_ascii_lowercase())
    }) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "managed mode never assigned the identities"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The agent knows the pod once its watch has the pod's address: until then it answers
    // "no pod on this node has IP" (the demo does not retry that), so the first run waits for it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match demo(&net, &one.client_id).await {
            Err(log) if log.contains("no pod on this node has IP") => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the agent never saw the pod:\n{log}"
                );
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            _ => break,
        }
    }
    // The demo gets a token of each identity bound through the one selector.
    for i in [&one, &two] {
        let claims = demo(&net, &i.client_id)
            .await
            .unwrap_or_else(|log| panic!("no token for {}:\n{log}", i.client_id));
        assert_eq!(claims["appid"], i.client_id.as_str(), "{claims}");
        assert_eq!(claims["aud"], "https://management.azure.com/", "{claims}");
    }
    // An identity on the node but not bound to the pod: refused.
    let refused = demo(&net, &kubelet.client_id).await;
    assert!(refused.is_err(), "not bound, yet served: {refused:?}");

    // An exception: the pod's requests pass through to IMDS unchanged, so the node's own
    // identity answers.
    identity::run_exception(
        &client,
        ExceptionVerb::Add,
        &ns.name,
        "demo-passthrough",
        &["app=demo".to_owned()],
        false,
    )
    .await
    .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let claims = loop {
        match demo(&net, &kubelet.client_id).await {
            Ok(c) => break c,
            Err(log) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the exception never let the request through:\n{log}"
                );
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    };
    assert_eq!(claims["appid"], kubelet.client_id.as_str(), "{claims}");
    identity::run_exception(
        &client,
        ExceptionVerb::Delete,
        &ns.name,
        "demo-passthrough",
        &[],
        false,
    )
    .await
    .unwrap();

    // `podid identity delete one`: the operator takes it off the node pool, then lets the
    // AzureIdentity go; the demo's request for it is refused; `two` still works.
    identity::run_delete(&client, Some(&cli_azure), &ns.name, "one", false)
        .await
        .unwrap();
    let ids: Api<AzureIdentity> = Api::namespaced(client.clone(), &ns.name);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while ids.get_opt("one").await.unwrap().is_some()
        || emu
            .assigned_identities(&vmss)
            .contains(&one.id.to_ascii_lowercase())
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "identity one never left the node pool"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let refused = demo(&net, &one.client_id).await;
    assert!(refused.is_err(), "deleted, yet served: {refused:?}");
    let claims = demo(&net, &two.client_id)
        .await
        .unwrap_or_else(|log| panic!("two no longer served:\n{log}"));
    assert_eq!(claims["appid"], two.client_id.as_str(), "{claims}");

    shutdown.cancel();
    run.await.unwrap();
    election.await.unwrap();
}
