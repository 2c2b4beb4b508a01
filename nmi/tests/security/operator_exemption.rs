//! Fault: the shipped operator is intercepted by the agent. With a managed-identity azure.json
//! the operator's pods get their Azure credential from IMDS at 169.254.169.254; on a node with
//! the agent that request is redirected to it, and an agent that treats the operator as an
//! ordinary pod answers 404, so the operator never writes to ARM. deploy/manifests/podid-operator.yaml
//! ships an AzurePodIdentityException for its pods (the original NMI honours it too); the
//! namespace is the boundary: the same labels elsewhere exempt nothing.
//!
//! Everything as shipped: both manifests applied to a real API server, the agent run as the
//! DaemonSet's account with the DaemonSet's arguments and its rules in a node network
//! namespace, and the operator's own credential code configured from the Deployment's arguments
//! and a managed-identity azure.json, run inside pod namespaces behind those rules. Only IMDS is
//! the Azure emulator's (the agent's `--imds-endpoint`).

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams, PostParams};
use podid_azure::CredentialConfig;
use podid_crds::AzurePodIdentityException;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::live;
use crate::live::netns::NodeNetns;

const OPERATOR: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../deploy/manifests/podid-operator.yaml"
);
const AGENT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../deploy/manifests/podid-nmi.yaml"
);

/// The documents of a manifest, in order.
fn documents(path: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde_json::to_value(serde_yaml::Value::deserialize(d).unwrap()).unwrap())
        .collect()
}

/// The one document of `kind` in `docs`.
fn one<T: serde::de::DeserializeOwned>(docs: &[Value], kind: &str) -> T {
    let found: Vec<&Value> = docs.iter().filter(|d| d["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "one {kind} in the manifest");
    serde_json::from_value(found[0].clone()).unwrap()
}

/// A pod on `node`, as a kubelet would report it running at `ip`.
async fn run_pod(pods: &Api<Pod>, pod: Value, ip: std::net::Ipv4Addr) -> Pod {
    let created = pods
        .create(&PostParams::default(), &live::obj(pod))
        .await
        .unwrap();
    pods.patch_status(
        &created.name_any(),
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {
            "phase": "Running", "podIP": ip.to_string(), "podIPs": [{"ip": ip.to_string()}]
        }})),
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn shipped_operator_is_not_intercepted() {
    let Some(net) = NodeNetns::create(
        "security::operator_exemption::shipped_operator_is_not_intercepted",
        "ox",
        3,
    ) else {
        return;
    };
    let operator_docs = documents(OPERATOR);
    let deployment: Deployment = one(&operator_docs, "Deployment");
    let exception: AzurePodIdentityException = one(&operator_docs, "AzurePodIdentityException");
    let ns = deployment.namespace().expect("the Deployment's namespace");
    assert_eq!(
        exception.namespace().as_deref(),
        Some(ns.as_str()),
        "the exception is in the operator's namespace"
    );
    let template = deployment.spec.clone().unwrap().template;
    let template_labels = template.metadata.clone().unwrap().labels.unwrap();
    let template_spec = template.spec.clone().unwrap();
    assert!(
        !template_spec.host_network.unwrap_or(false),
        "the operator's pods are on the pod network, so the agent's rules apply to them"
    );

    let cluster = podid_testkit::Cluster::shared_async().await;
    for manifest in [OPERATOR, AGENT] {
        cluster
            .kubectl_apply(std::path::Path::new(manifest), None)
            .unwrap_or_else(|e| panic!("kubectl apply {manifest}: {e}"));
    }
    let admin = cluster.client().await.unwrap();
    let node = "aks-opx-12345678-vmss000000";

    // Azure: the node's scale set carries the cluster identity azure.json names.
    let emu = podid_azure_emulator::Emulator::start(podid_azure_emulator::Settings::default())
        .await
        .unwrap();
    let vmss = emu.add_scale_set("MC_opx", "aks-opx-12345678-vmss", 1);
    let cluster_identity = emu.add_identity("MC_opx", "opx-agentpool");
    emu.preassign(&vmss, &cluster_identity.id);

    // Pods on the node: the operator's (its template, named as its ReplicaSet's pods are), an
    // ordinary pod in its namespace, and one with the operator's labels elsewhere. No owner
    // reference: another test of this binary may start a controller manager, whose garbage
    // collector would delete a pod whose ReplicaSet does not exist; the node object keeps its
    // pod collector from deleting them as orphans.
    let rs = "podid-operator-5d8f7c9b6";
    let mut operator_pod = json!({
        "metadata": {
            "name": format!("{rs}-x2x9q"),
            "labels": template_labels,
        },
        "spec": serde_json::to_value(&template_spec).unwrap(),
    });
    match Api::<k8s_openapi::api::core::v1::Node>::all(admin.clone())
        .create(
            &PostParams::default(),
            &live::obj(json!({"metadata": {"name": node}})),
        )
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => panic!("creating node {node}: {e}"),
    }
    operator_pod["metadata"]["labels"]["pod-template-hash"] = json!("5d8f7c9b6");
    operator_pod["spec"]["nodeName"] = json!(node);
    let plain = |name: &str, labels: Value| {
        json!({
            "metadata": {"name": name, "labels": labels},
            "spec": {"nodeName": node, "serviceAccountName": "app", "automountServiceAccountToken": false,
                     "containers": [{"name": "c", "image": "registry.invalid/app:1"}]}
        })
    };
    let in_ns: Api<Pod> = Api::namespaced(admin.clone(), &ns);
    let other = cluster.namespace("opx-copycat").await;
    for namespace in [&ns, &other.name] {
        Api::<ServiceAccount>::namespaced(admin.clone(), namespace)
            .create(
                &PostParams::default(),
                &live::obj(json!({"metadata": {"name": "app"}})),
            )
            .await
            .unwrap();
    }
    run_pod(&in_ns, operator_pod, NodeNetns::pod_ip(0)).await;
    run_pod(
        &in_ns,
        plain("opx-ordinary", json!({"app": "web"})),
        NodeNetns::pod_ip(1),
    )
    .await;
    run_pod(
        &Api::namespaced(admin.clone(), &other.name),
        plain(
            "opx-copycat",
            serde_json::to_value(&template_labels).unwrap(),
        ),
        NodeNetns::pod_ip(2),
    )
    .await;

    // The agent as the DaemonSet runs it: its arguments, its account, its rules.
    let ds: DaemonSet = one(&documents(AGENT), "DaemonSet");
    let ds_namespace = ds.namespace().unwrap();
    let args = ds.spec.unwrap().template.spec.unwrap().containers[0]
        .args
        .clone()
        .unwrap();
    let flags = <podid_nmi::config::Flags as clap::Parser>::try_parse_from(
        std::iter::once("podid-nmi".to_owned())
            .chain(args.iter().map(|a| a.replace("$(NODE_NAME)", node))),
    )
    .unwrap();
    let spec = flags.rule_spec();
    assert!(net.iptables().ensure(&spec).await.unwrap());
    let listener = net.listen_on_node(&format!("127.0.0.1:{}", spec.target_port));
    let mut config = flags.server_config();
    config.imds_endpoint = url::Url::parse(&emu.imds_endpoint("aks-opx-12345678-vmss_0")).unwrap();
    let as_agent = cluster
        .client_as(&format!("system:serviceaccount:{ds_namespace}:podid-nmi"))
        .await
        .unwrap();
    let _agent = live::start_agent_on(listener, as_agent, node, config, &emu.arm_endpoint()).await;

    // The operator's credential as its Deployment configures it, with a managed-identity
    // azure.json where the Deployment mounts one.
    let dir = tempfile::tempdir().unwrap();
    let azure_json = dir.path().join("azure.json");
    std::fs::write(
        &azure_json,
        json!({
            "cloud": "AzurePublicCloud", "tenantId": emu.tenant_id(),
            "subscriptionId": emu.subscription_id(), "resourceGroup": "MC_opx",
            "vmType": "vmss", "useManagedIdentityExtension": true,
            "userAssignedIdentityID": cluster_identity.client_id,
            "aadClientId": "msi", "aadClientSecret": "msi",
        })
        .to_string(),
    )
    .unwrap();
    let operator_args = template_spec.containers[0].args.clone().unwrap();
    let operator_flags = <podid_operator::config::Flags as clap::Parser>::try_parse_from(
        std::iter::once("podid-operator".to_owned()).chain(operator_args.iter().map(|a| {
            a.replace(
                "/etc/kubernetes/azure.json",
                &azure_json.display().to_string(),
            )
            .replace("$(POD_NAMESPACE)", &ns)
        })),
    )
    .unwrap();
    let cloud = operator_flags.cloud_config().unwrap();
    match &cloud.credential {
        CredentialConfig::ManagedIdentity {
            imds_endpoint,
            client_id,
        } => {
            assert_eq!(imds_endpoint, "http://169.254.169.254");
            assert_eq!(
                client_id.as_deref(),
                Some(cluster_identity.client_id.as_str())
            );
        }
        other => panic!("a managed-identity azure.json gives a managed identity: {other:?}"),
    }
    let arm_token = |pod: usize| {
        let credential = cloud.credential.clone();
        let scope = format!("{}/.default", cloud.endpoints.arm_audience);
        net.in_pod(pod, move || async move {
            let http = reqwest::Client::builder().no_proxy().build().unwrap();
            credential
                .build(http)
                .unwrap()
                .get_token(&[&scope])
                .await
                .map(|t| t.token.secret().to_owned())
                .map_err(|e| e.to_string())
        })
    };

    let token = arm_token(0)
        .await
        .unwrap_or_else(|e| panic!("the operator's pod gets no ARM token: {e}"));
    let claims = live::claims(&token);
    assert_eq!(
        claims["appid"],
        cluster_identity.client_id.as_str(),
        "{claims}"
    );
    assert_eq!(claims["aud"], "https://management.azure.com", "{claims}");

    emu.reset_calls();
    for (pod, who) in [
        (1, "an ordinary pod in the operator's namespace"),
        (2, "a pod with the operator's labels in another namespace"),
    ] {
        let answer = arm_token(pod).await;
        assert!(
            answer.is_err(),
            "{who} is not exempt, yet got the cluster identity's token"
        );
    }
    assert!(
        emu.calls().keys().all(|k| !k.contains("imds")),
        "pods that are not exempt never reach IMDS: {:?}",
        emu.calls()
    );
}
