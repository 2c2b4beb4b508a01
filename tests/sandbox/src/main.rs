//! `tests/cluster/up --with-podid`: a local podid to try by hand. Starts the test control plane
//! (etcd, kube-apiserver, controllers, one fake AKS node), the Azure emulator seeded with the
//! node's scale set, an identity and the operator's service principal, then podid-operator and
//! podid-nmi (the node agent without iptables: a pod's request is made from the pod's address),
//! the Workload ID webhook when it is built, and a sample app on pod identity. Prints the kubeconfig and the next commands; Ctrl-C (or
//! SIGTERM) stops everything it started.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use podid_azure_emulator::{Emulator, Settings};
use serde_json::json;

#[derive(Parser)]
struct Args {
    /// Where podid-operator and podid-nmi are (tests/cluster/up builds them into the target
    /// directory's debug/).
    #[arg(long, value_name = "DIR")]
    bin_dir: PathBuf,
    /// Accepted for `tests/cluster/up --with-podid`.
    #[arg(long, hide = true)]
    with_podid: bool,
}

/// The sample app's namespace.
const NAMESPACE: &str = "demo";
/// The operator's service principal in the emulator (a throwaway secret).
const APP: (&str, &str) = ("5a4db0c0-0000-4000-8000-00000000d0e0", "sandbox-secret");

struct Children(Vec<(&'static str, Child)>);

impl Drop for Children {
    fn drop(&mut self) {
        for (_, c) in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn spawn(
    name: &'static str,
    mut cmd: Command,
    log: &Path,
) -> anyhow::Result<(&'static str, Child)> {
    let file = std::fs::File::create(log).with_context(|| log.display().to_string())?;
    cmd.stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file);
    // Stopped with the sandbox even when it is killed outright.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("starting {name} ({:?})", cmd.get_program()))?;
    Ok((name, child))
}

async fn apply(client: &kube::Client, obj: serde_json::Value) -> anyhow::Result<()> {
    let api_version = obj["apiVersion"].as_str().unwrap_or_default().to_owned();
    let kind = obj["kind"].as_str().unwrap_or_default().to_owned();
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", &api_version));
    let gvk = kube::api::GroupVersionKind::gvk(group, version, &kind);
    let (ar, caps) = kube::discovery::pinned_kind(client, &gvk).await?;
    let name = obj["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let api: Api<DynamicObject> = match caps.scope {
        kube::discovery::Scope::Namespaced => Api::namespaced_with(client.clone(), NAMESPACE, &ar),
        kube::discovery::Scope::Cluster => Api::all_with(client.clone(), &ar),
    };
    api.patch(
        &name,
        &PatchParams::apply("podid-sandbox").force(),
        &Patch::Apply(&obj),
    )
    .await
    .with_context(|| format!("applying {kind} {name}"))?;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let operator = args.bin_dir.join("podid-operator");
    let nmi = args.bin_dir.join("podid-nmi");
    for b in [&operator, &nmi] {
        if !b.is_file() {
            bail!(
                "{} not found: build it first (cargo build -p podid-operator -p podid-nmi)",
                b.display()
            );
        }
    }
    eprintln!("starting the control plane and a fake AKS node…");
    let cluster = tokio::task::spawn_blocking(podid_testkit::Cluster::shared).await?;
    let pool = podid_testkit::NodePool::aks("nodepool1", 1);
    cluster
        .add_nodes(&pool)
        .await
        .context("starting the fake node")?;
    let node = pool.node_name(0);
    let client = cluster.client().await?;
    let dir = cluster.dir().join("sandbox");
    std::fs::create_dir_all(&dir)?;

    // Azure: the node's scale set, the sample's identity, the operator's service principal.
    let emu = Emulator::start(Settings::default()).await?;
    emu.trust_issuer_ca(cluster.ca_pem());
    emu.add_scale_set(&pool.resource_group, &pool.scale_set, 1);
    let ident = emu.add_identity(&pool.resource_group, "sample");
    emu.add_app(APP.0, Some(APP.1), None);
    let (azure_json, env_file) = emu.write_cloud_config(&dir, &pool.resource_group, APP)?;

    // The sample app on pod identity.
    apply(
        &client,
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}),
    )
    .await?;
    apply(
        &client,
        json!({"apiVersion": "aadpodidentity.k8s.io/v1", "kind": "AzureIdentity",
        "metadata": {"name": "sample-id", "namespace": NAMESPACE},
        "spec": {"type": 0, "resourceID": ident.id, "clientID": ident.client_id}}),
    )
    .await?;
    apply(
        &client,
        json!({"apiVersion": "aadpodidentity.k8s.io/v1", "kind": "AzureIdentityBinding",
        "metadata": {"name": "sample-binding", "namespace": NAMESPACE},
        "spec": {"azureIdentity": "sample-id", "selector": "sample"}}),
    )
    .await?;
    apply(
        &client,
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "sample", "namespace": NAMESPACE},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "sample"}},
            "template": {"metadata": {"labels": {"app": "sample", "aadpodidbinding": "sample"}},
                "spec": {"containers": [{"name": "app", "image": "registry.invalid/sample:1"}],
                         "terminationGracePeriodSeconds": 0}}}}),
    )
    .await?;

    // podid-operator and podid-nmi.
    let kubeconfig = cluster.kubeconfig().to_path_buf();
    let nmi_port = free_port()?;
    let mut op = Command::new(&operator);
    op.arg(format!("--cloudconfig={}", azure_json.display()))
        .arg(format!("--kubeconfig={}", kubeconfig.display()))
        .arg(format!("--http-probe-port={}", free_port()?))
        .arg(format!("--prometheus-port={}", free_port()?))
        .env("AZURE_ENVIRONMENT_FILEPATH", &env_file);
    let mut agent = Command::new(&nmi);
    agent
        .arg(format!("--node={node}"))
        .arg("--manage-iptables=false")
        .arg("--allow-network-plugin-kubenet")
        .arg(format!("--nmi-port={nmi_port}"))
        .arg(format!("--http-probe-port={}", free_port()?))
        .arg(format!("--prometheus-port={}", free_port()?))
        .arg(format!(
            "--imds-endpoint={}",
            emu.imds_endpoint(&format!("{}_0", pool.scale_set))
        ))
        .arg(format!("--entra-authority={}", emu.arm_endpoint()))
        .env("KUBECONFIG", &kubeconfig);
    let children = Children(vec![
        spawn("podid-operator", op, &dir.join("podid-operator.log"))?,
        spawn("podid-nmi", agent, &dir.join("podid-nmi.log"))?,
    ]);

    // The Workload ID webhook, registered as its chart does, when it is built
    // (tests/peers/build-workload-identity.sh): the cutover of the sample then really happens.
    let webhook = match podid_testkit::webhook::binary("webhook") {
        Ok(_) => Some(
            podid_testkit::webhook::WorkloadIdentityWebhook::start(cluster, &emu.tenant_id())
                .await
                .context("starting the Workload ID webhook")?,
        ),
        Err(e) => {
            eprintln!("no Workload ID webhook ({e}): the cutover commands are left out");
            None
        }
    };
    let ca = dir.join("emulator-ca.pem");
    std::fs::write(&ca, emu.ca_pem())?;

    eprintln!("waiting for the sample pod and its identity…");
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let pod = podid_testkit::wait_for_running_pods(pods, "app=sample", 1, 120)
        .await
        .context("the sample pod did not start")?
        .remove(0);
    let ip = pod.status.and_then(|s| s.pod_ip).unwrap_or_default();
    let assigned: Api<podid_crds::AzureAssignedIdentity> =
        Api::namespaced(client.clone(), "default");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let done = assigned
            .list(&Default::default())
            .await?
            .items
            .iter()
            .any(|a| {
                a.status.as_ref().map(|s| &s.status)
                    == Some(&podid_crds::AssignedIdentityState::Assigned)
            });
        if done {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            bail!(
                "podid-operator assigned nothing in 120 s: see {}",
                dir.join("podid-operator.log").display()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    println!("podid sandbox is up.");
    println!("export KUBECONFIG={}", kubeconfig.display());
    println!("logs: {}", dir.display());
    println!();
    println!("Try:");
    println!("  podid report -n {NAMESPACE}");
    println!("  podid cutover plan -n {NAMESPACE}");
    println!(
        "  curl -s --interface {ip} -H Metadata:true 'http://127.0.0.1:{nmi_port}/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https://vault.azure.net'"
    );
    if webhook.is_some() {
        println!();
        println!("Then move the sample to Workload ID (and back):");
        println!("  podid cutover prepare -n {NAMESPACE} --timeout 2m");
        println!("  podid cutover switch -n {NAMESPACE} --yes");
        println!(
            "  podid cutover verify -n {NAMESPACE} --authority {} --extra-ca-file {}",
            emu.authority_host(),
            ca.display()
        );
        println!("  podid cutover finalize -n {NAMESPACE} --yes");
        println!("  podid cutover rollback -n {NAMESPACE} --yes");
    }
    println!();
    println!("Press Ctrl-C to stop.");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    eprintln!("stopping…");
    if let Some(mut w) = webhook {
        let _ = w.stop().await;
    }
    drop(children);
    podid_testkit::stop();
    Ok(())
}
