//! Nothing secret in anything `podid` prints: a cluster whose service-principal identities keep
//! a client secret and a certificate's private key in Secrets, and `podid` signing in to Azure
//! with its own client secret (and once with one Entra refuses). Every format of `podid report`,
//! `podid identity list` and `podid cutover status` (and `plan`, `snapshot`), stdout and stderr,
//! with the log at trace, is scanned for those secrets and for any JWT.

use std::process::{Command, Output};

use kube::api::{Api, DynamicObject, PostParams};
use podid_testkit::Cluster;
use podid_testkit::secret_scan::SecretScan;
use serde_json::{Value, json};

#[path = "support/identity.rs"]
mod identity_support;
use identity_support::text;

/// A value no one else has: `prefix` and 24 random bytes as hex.
fn fresh(prefix: &str) -> String {
    use std::io::Read;
    let mut bytes = [0u8; 24];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut bytes)
        .unwrap();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{prefix}-{hex}")
}

/// An RSA private key (PEM) from the `openssl` command.
fn rsa_key() -> Option<String> {
    std::process::Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
        ])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
}

/// Creates `object` in `ns` (an existing one is left as it is).
async fn create(client: &kube::Client, ns: &str, object: Value) {
    let api_version = object["apiVersion"].as_str().unwrap();
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let gvk = kube::api::GroupVersionKind::gvk(group, version, object["kind"].as_str().unwrap());
    let (resource, _) = kube::discovery::pinned_kind(client, &gvk).await.unwrap();
    match Api::<DynamicObject>::namespaced_with(client.clone(), ns, &resource)
        .create(
            &PostParams::default(),
            &serde_json::from_value(object).unwrap(),
        )
        .await
    {
        // The default ServiceAccount, when the controller manager was first.
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => panic!("{e}"),
    }
}

fn podid(cluster: &Cluster, env_file: &std::path::Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_podid"))
        .args(args)
        .env("KUBECONFIG", cluster.kubeconfig())
        .env("AZURE_ENVIRONMENT_FILEPATH", env_file)
        .env("PODID_LOG", "trace")
        .env_remove("AZURE_CLIENT_SECRET")
        .env_remove("AZURE_CLOUD_CONFIG")
        .env_remove("AZURE_TENANT_ID")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_output_in_every_format_never_holds_a_secret() {
    const TEST: &str = "cli_output_in_every_format_never_holds_a_secret";
    let Some(key) = rsa_key() else {
        podid_testkit::prereq::skip(TEST, "the openssl command is not available");
        return;
    };
    let cluster = Cluster::shared_async().await;
    let ns = cluster.namespace("cli-secrets").await;
    let (c, n) = (&ns.client, ns.name.as_str());
    let mut scan = SecretScan::default();
    scan.forbid_any_jwt();
    let (sp_secret, own_secret, refused_secret) = (
        fresh("sp-secret"),
        fresh("podid-own-secret"),
        fresh("refused-secret"),
    );
    scan.plant_secret(
        "the identity's client secret (Secret sp-secret)",
        &sp_secret,
    );
    scan.plant_private_key("the certificate's private key (Secret sp-cert)", &key);
    scan.plant_secret("podid's own client secret (azure.json)", &own_secret);
    scan.plant_secret(
        "a client secret Entra refuses (azure.json)",
        &refused_secret,
    );

    // Azure for `podid`: its own service principal, and one whose secret Entra refuses.
    let emu = podid_azure_emulator::Emulator::start(Default::default())
        .await
        .unwrap();
    let app = "1d000000-0000-0000-0000-00000000c5ec";
    emu.add_app(app, Some(&own_secret), None);
    let dir = tempfile::tempdir().unwrap();
    let (good_dir, bad_dir) = (dir.path().join("good"), dir.path().join("bad"));
    std::fs::create_dir_all(&good_dir).unwrap();
    std::fs::create_dir_all(&bad_dir).unwrap();
    let (azure_json, env_file) = emu
        .write_cloud_config(&good_dir, "rg", (app, &own_secret))
        .unwrap();
    let (refused_json, _) = emu
        .write_cloud_config(&bad_dir, "rg", (app, &refused_secret))
        .unwrap();
    let uami = emu.add_identity("rg", "cli-secrets-id");
    // A node pool, so that `identity list` with Azure reads its scale set (signing in first).
    let pool = podid_testkit::NodePool::aks("clisecrets", 1);
    cluster.add_nodes(&pool).await.expect("fake node ready");
    let vmss = emu.add_scale_set(&pool.resource_group, &pool.scale_set, 1);
    emu.preassign(&vmss, &uami.id);

    // The cluster: the Secrets, a service principal with each, a user-assigned identity, a
    // binding of each, a Deployment and a bare pod bound to them.
    for (name, data) in [
        ("sp-secret", json!({"clientsecret": sp_secret})),
        ("sp-cert", json!({"certificate": key})),
    ] {
        create(
            c,
            n,
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "stringData": data}),
        )
        .await;
    }
    for (name, spec) in [
        (
            "sp",
            json!({"type": 1, "clientID": "5e1f0000-0000-0000-0000-00000000c11e", "tenantID": emu.tenant_id(),
                   "clientPassword": {"name": "sp-secret", "namespace": n}}),
        ),
        (
            "cert",
            json!({"type": 2, "clientID": "5e1f0000-0000-0000-0000-00000000ce57", "tenantID": emu.tenant_id(),
                   "clientPassword": {"name": "sp-cert", "namespace": n}}),
        ),
        (
            "uami",
            json!({"type": 0, "clientID": uami.client_id, "resourceID": uami.id}),
        ),
    ] {
        create(
            c,
            n,
            json!({"apiVersion": "aadpodidentity.k8s.io/v1", "kind": "AzureIdentity",
                   "metadata": {"name": name}, "spec": spec}),
        )
        .await;
        create(
            c,
            n,
            json!({"apiVersion": "aadpodidentity.k8s.io/v1", "kind": "AzureIdentityBinding",
                   "metadata": {"name": format!("{name}-binding")},
                   "spec": {"azureIdentity": name, "selector": name}}),
        )
        .await;
    }
    create(
        c,
        n,
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default"}}),
    )
    .await;
    for (name, selector) in [("web", "sp"), ("worker", "cert")] {
        create(
            c,
            n,
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
                   "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}},
                            "template": {"metadata": {"labels": {"app": name, "aadpodidbinding": selector}},
                                         "spec": {"containers": [{"name": "c", "image": "registry.invalid/app:1"}]}}}}),
        )
        .await;
    }
    create(
        c,
        n,
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "bare", "labels": {"aadpodidbinding": "uami"}},
               "spec": {"containers": [{"name": "c", "image": "registry.invalid/app:1"}]}}),
    )
    .await;

    let cloud = format!("--cloud-config={}", azure_json.display());
    let refused = format!("--cloud-config={}", refused_json.display());
    let mut runs: Vec<(Vec<String>, Vec<i32>)> = Vec::new();
    let args = |a: &[&str]| a.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    for format in ["table", "json", "yaml", "markdown", "html"] {
        runs.push((args(&["report", "-n", n, "-q", "-o", format]), vec![0, 3]));
    }
    for format in ["table", "json", "yaml"] {
        runs.push((args(&["identity", "list", "-n", n, "-o", format]), vec![0]));
        runs.push((
            args(&["identity", "list", "-n", n, "-o", format, &cloud]),
            vec![0],
        ));
        runs.push((
            args(&["cutover", "status", "-n", n, "-q", "-o", format]),
            vec![0, 3],
        ));
        runs.push((
            args(&["cutover", "plan", "-n", n, "-q", "-o", format]),
            vec![0, 3],
        ));
    }
    runs.push((args(&["snapshot", "-n", n, "-q"]), vec![0]));
    // Errors: Entra refusing podid's secret; a context the kubeconfig does not have.
    runs.push((
        args(&["identity", "list", "-n", n, "-o", "json", &refused]),
        vec![1],
    ));
    runs.push((
        args(&["cutover", "status", "-n", n, "--context", "no-such-context"]),
        vec![1, 2],
    ));

    let mut traced = 0;
    for (a, codes) in &runs {
        let argv: Vec<&str> = a.iter().map(String::as_str).collect();
        let out = podid(cluster, &env_file, &argv);
        let code = out.status.code().unwrap_or(-1);
        assert!(
            codes.contains(&code),
            "podid {}: {}",
            a.join(" "),
            text(&out)
        );
        let what = format!("podid {}", a.join(" "));
        scan.scan(
            &format!("{what} (stdout)"),
            &String::from_utf8_lossy(&out.stdout),
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        traced += stderr.lines().filter(|l| l.contains("TRACE")).count();
        scan.scan(&format!("{what} (stderr)"), &stderr);
    }
    assert!(
        emu.call_count("POST token") >= 4,
        "podid signed in to Azure (3 with its secret, 1 refused): {:?}",
        emu.calls()
    );
    assert!(traced > 100, "logs at trace: {traced} TRACE lines");
    assert_eq!(scan.planted(), 4, "{}", scan.summary());
    eprintln!("{TEST}: {} runs; {}", runs.len(), scan.summary());
}
