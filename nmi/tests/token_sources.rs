//! The token sources against the Azure emulator: IMDS for a managed identity on the node, Entra
//! client credentials with a secret and with a certificate (PKCS#12 as the original stored it,
//! and a PEM bundle).

use std::collections::BTreeMap;
use std::sync::Arc;

use podid_azure_emulator::{Emulator, Settings};
use podid_nmi::cache::{Clock, SystemClock};
use podid_nmi::token::{
    ClientCredential, ClientCredentialsSource, ImdsTokenSource, TokenError, TokenSource,
    certificate_credential, http_client,
};

mod live;
use live::claims;

fn clock() -> Arc<dyn Clock> {
    Arc::new(SystemClock)
}

fn entra(emu: &Emulator, client_id: &str, credential: ClientCredential) -> ClientCredentialsSource {
    ClientCredentialsSource {
        http: http_client(),
        authority: url::Url::parse(&emu.arm_endpoint()).unwrap(),
        tenant_id: emu.tenant_id(),
        client_id: client_id.into(),
        credential,
        clock: clock(),
    }
}

#[tokio::test]
async fn imds_gives_tokens_only_for_identities_on_the_node() {
    let emu = Emulator::start(Settings::default()).await.unwrap();
    let vmss = emu.add_scale_set("rg", "aks-pool-1-vmss", 1);
    let on = emu.add_identity("rg", "on-node");
    let off = emu.add_identity("rg", "off-node");
    emu.preassign(&vmss, &on.id);
    let imds = url::Url::parse(&emu.imds_endpoint("aks-pool-1-vmss_0")).unwrap();
    let source = |client_id: &str| ImdsTokenSource {
        http: http_client(),
        endpoint: imds.clone(),
        client_id: Some(client_id.into()),
        clock: clock(),
    };
    let t = source(&on.client_id)
        .fetch("https://vault.azure.net")
        .await
        .unwrap();
    assert_eq!(claims(&t.access_token)["appid"], on.client_id.as_str());
    assert_eq!(t.resource, "https://vault.azure.net");
    let err = source(&off.client_id)
        .fetch("https://vault.azure.net")
        .await
        .unwrap_err();
    assert!(
        matches!(err, TokenError::Rejected { status: 400, .. }),
        "{err}"
    );
    assert_eq!(err.status(), 403);
    assert!(err.to_string().contains("Identity not found"), "{err}");
}

#[tokio::test]
async fn entra_client_secret() {
    let emu = Emulator::start(Settings::default()).await.unwrap();
    let app = "0a0a0a0a-0000-0000-0000-000000000001";
    emu.add_app(app, Some("right"), None);
    let t = entra(&emu, app, ClientCredential::Secret("right".into()))
        .fetch("https://management.azure.com/")
        .await
        .unwrap();
    assert_eq!(claims(&t.access_token)["appid"], app);
    let err = entra(&emu, app, ClientCredential::Secret("wrong".into()))
        .fetch("https://management.azure.com/")
        .await
        .unwrap_err();
    assert_eq!(err.status(), 403, "{err}");
    assert!(
        !err.to_string().contains("wrong"),
        "the secret is not echoed: {err}"
    );
}

/// An RSA key and self-signed certificate (PEM), and the same as PKCS#12 with `password`.
fn openssl_material(password: &str) -> Option<(String, Vec<u8>)> {
    let dir = tempfile::tempdir().unwrap();
    let p = |f: &str| dir.path().join(f).display().to_string();
    let ok = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=podid-sp",
        ])
        .args(["-keyout", &p("key.pem"), "-out", &p("cert.pem")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        return None;
    }
    let ok = std::process::Command::new("openssl")
        .args([
            "pkcs12",
            "-export",
            "-inkey",
            &p("key.pem"),
            "-in",
            &p("cert.pem"),
        ])
        .args([
            "-out",
            &p("sp.p12"),
            "-passout",
            &format!("pass:{password}"),
        ])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        return None;
    }
    let pem = std::fs::read_to_string(p("key.pem")).unwrap()
        + &std::fs::read_to_string(p("cert.pem")).unwrap();
    Some((pem, std::fs::read(p("sp.p12")).unwrap()))
}

#[tokio::test]
async fn entra_certificate_from_pkcs12_and_pem() {
    let Some((pem, p12)) = openssl_material("p@ss") else {
        podid_testkit::prereq::skip(
            "entra_certificate_from_pkcs12_and_pem",
            "the openssl command is not available",
        );
        return;
    };
    let cert_pem = pem[pem.find("-----BEGIN CERTIFICATE-----").unwrap()..].to_owned();
    let emu = Emulator::start(Settings::default()).await.unwrap();
    let app = "0a0a0a0a-0000-0000-0000-000000000002";
    emu.add_app(app, None, Some(&cert_pem));

    let secret: BTreeMap<String, Vec<u8>> = [
        ("certificate".to_owned(), p12.clone()),
        ("password".to_owned(), b"p@ss".to_vec()),
    ]
    .into();
    let cred = certificate_credential(&secret).unwrap();
    let t = entra(&emu, app, cred)
        .fetch("https://vault.azure.net")
        .await
        .unwrap();
    assert_eq!(claims(&t.access_token)["appid"], app);

    let wrong: BTreeMap<String, Vec<u8>> = [
        ("certificate".to_owned(), p12),
        ("password".to_owned(), b"nope".to_vec()),
    ]
    .into();
    assert!(certificate_credential(&wrong).is_err());

    let bundle: BTreeMap<String, Vec<u8>> = [("certificate".to_owned(), pem.into_bytes())].into();
    let t = entra(&emu, app, certificate_credential(&bundle).unwrap())
        .fetch("https://vault.azure.net")
        .await
        .unwrap();
    assert_eq!(claims(&t.access_token)["appid"], app);
}

/// Service principals with a certificate (type 2) through the agent, end to end: the Secret in
/// the real API server holds a PKCS#12 archive with its password (as the original stored it) or
/// a PEM bundle; a pod bound to each gets its token from the emulator's Entra, signed in with
/// that certificate; a wrong password is a 503 naming the Secret, not a token.
#[tokio::test]
async fn certificate_identities_are_served_to_their_pods_through_the_agent() {
    use k8s_openapi::api::core::v1::{Pod, Secret};
    use kube::api::{Api, PostParams};
    use podid_crds::policy::Mode;
    use podid_nmi::server::ServerConfig;
    use serde_json::json;

    let Some((pem, p12)) = openssl_material("p@ss") else {
        podid_testkit::prereq::skip(
            "certificate_identities_are_served_to_their_pods_through_the_agent",
            "the openssl command is not available",
        );
        return;
    };
    let cert_pem = pem[pem.find("-----BEGIN CERTIFICATE-----").unwrap()..].to_owned();
    let cluster = podid_testkit::Cluster::shared_async().await;
    let ns = cluster.namespace("nmi-cert").await;
    let client = ns.client.clone();
    let pool = podid_testkit::NodePool::aks("nmicert", 1);
    cluster.add_nodes(&pool).await.expect("fake node ready");
    let node = pool.node_name(0);
    let emu = Emulator::start(Settings::default()).await.unwrap();
    emu.add_scale_set(&pool.resource_group, &pool.scale_set, 1);
    let app = "0a0a0a0a-0000-0000-0000-0000000000c2";
    emu.add_app(app, None, Some(&cert_pem));

    use base64::Engine;
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    for (name, data) in [
        (
            "p12",
            json!({"certificate": b64(&p12), "password": b64(b"p@ss")}),
        ),
        ("pem", json!({"certificate": b64(pem.as_bytes())})),
        (
            "wrong",
            json!({"certificate": b64(&p12), "password": b64(b"nope")}),
        ),
    ] {
        secrets
            .create(
                &PostParams::default(),
                &live::obj(json!({"metadata": {"name": format!("sp-{name}")}, "data": data})),
            )
            .await
            .unwrap();
        live::bound_identity(
            &client,
            &ns.name,
            name,
            json!({"type": 2, "clientID": app, "tenantID": emu.tenant_id(),
                   "adEndpoint": format!("{}/", emu.arm_endpoint()),
                   "clientPassword": {"name": format!("sp-{name}"), "namespace": ns.name}}),
            &format!("cert-{name}"),
        )
        .await;
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let ips = live::run_pods(
        &pods,
        &node,
        &[
            ("pod-p12", json!({"aadpodidbinding": "cert-p12"})),
            ("pod-pem", json!({"aadpodidbinding": "cert-pem"})),
            ("pod-wrong", json!({"aadpodidbinding": "cert-wrong"})),
        ],
    )
    .await;
    let config = ServerConfig {
        mode: Mode::Managed,
        force_namespaced: true,
        ..Default::default()
    };
    let (addr, _agent) =
        live::start_agent(client.clone(), &node, config, &emu.arm_endpoint()).await;
    for pod in ["pod-p12", "pod-pem"] {
        let (status, body) = live::call(addr, ips[pod], "").await;
        assert_eq!(status, 200, "{pod}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            claims(v["access_token"].as_str().unwrap())["appid"],
            app,
            "{pod}"
        );
    }
    let (status, body) = live::call(addr, ips["pod-wrong"], "").await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains(&format!("secret {}/sp-wrong", ns.name)),
        "{body}"
    );
    assert!(!body.contains("access_token"), "{body}");
}
