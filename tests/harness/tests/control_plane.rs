//! The control plane itself: a Deployment rolls out on fake AKS nodes with 127.x pod IPs, and a
//! ServiceAccount token verifies against the issuer's anonymously served JWKS.

use std::collections::BTreeSet;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use kube::api::{Api, ListParams, PostParams};
use podid_crds::{AzureIdentity, AzureIdentitySpec};
use podid_testkit::builders::obj;
use podid_testkit::{Cluster, NodePool};

#[tokio::test]
async fn deployment_runs_on_fake_nodes_and_tokens_verify_against_anonymous_jwks() {
    let cluster = Cluster::shared();
    let ns = cluster.namespace("smoke").await;
    let client = ns.client.clone();

    // An AzureIdentity is accepted by the installed CRD.
    let ids: Api<AzureIdentity> = Api::namespaced(client.clone(), &ns.name);
    let id = AzureIdentity::new(
        "demo",
        AzureIdentitySpec {
            resource_id: "/subscriptions/s/resourcegroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/demo".into(),
            client_id: "11111111-2222-3333-4444-555555555555".into(),
            ..Default::default()
        },
    );
    ids.create(&PostParams::default(), &id)
        .await
        .expect("create AzureIdentity");

    // Three replicas on two fake VMSS nodes.
    let pool = NodePool::aks("smoke", 2);
    cluster.add_nodes(&pool).await.expect("fake nodes ready");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    deployments
        .create(
            &PostParams::default(),
            &obj(serde_json::json!({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "web"},
                "spec": {
                    "replicas": 3,
                    "selector": {"matchLabels": {"app": "web"}},
                    "template": {
                        "metadata": {"labels": {"app": "web", "aadpodidbinding": "demo"}},
                        "spec": {
                            "nodeSelector": {"kubernetes.azure.com/agentpool": pool.scale_set},
                            "containers": [{"name": "web", "image": "registry.invalid/web:1"}]
                        }
                    }
                }
            })),
        )
        .await
        .expect("create Deployment");

    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let running_pods = podid_testkit::wait_for_running_pods(pods, "app=web", 3, 120)
        .await
        .expect("3 pods Running with 127.10.x.x IPs");
    assert_eq!(running_pods.len(), 3);
    let nodes: BTreeSet<String> = running_pods
        .iter()
        .map(|p| p.spec.as_ref().unwrap().node_name.clone().unwrap())
        .collect();
    let pool_nodes: BTreeSet<String> = (0..2).map(|i| pool.node_name(i)).collect();
    assert!(
        nodes.is_subset(&pool_nodes),
        "{nodes:?} not on {pool_nodes:?}"
    );
    let ips: BTreeSet<&str> = running_pods
        .iter()
        .map(|p| p.status.as_ref().unwrap().pod_ip.as_deref().unwrap())
        .collect();
    assert_eq!(ips.len(), 3, "distinct pod IPs: {ips:?}");

    // A projected-style token from TokenRequest verifies against the issuer's JWKS,
    // fetched without credentials.
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns.name);
    sas.create(
        &PostParams::default(),
        &obj(serde_json::json!({"metadata": {"name": "workload"}})),
    )
    .await
    .expect("create ServiceAccount");
    let tr: TokenRequest = obj(serde_json::json!({
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
        "spec": {"audiences": ["api://AzureADTokenExchange"], "expirationSeconds": 3600}
    }));
    let tr: TokenRequest = sas
        .create_subresource("token", "workload", &PostParams::default(), &tr)
        .await
        .expect("TokenRequest");
    let token = tr.status.expect("token status").token;

    let anon = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cluster.ca_pem().as_bytes()).unwrap())
        .build()
        .unwrap();
    let discovery: serde_json::Value = anon
        .get(format!(
            "{}/.well-known/openid-configuration",
            cluster.issuer()
        ))
        .send()
        .await
        .unwrap()
        .error_for_status()
        .expect("anonymous discovery")
        .json()
        .await
        .unwrap();
    assert_eq!(discovery["issuer"], cluster.issuer());
    let jwks_uri = discovery["jwks_uri"].as_str().unwrap().to_string();
    let jwks: jsonwebtoken::jwk::JwkSet = anon
        .get(&jwks_uri)
        .send()
        .await
        .unwrap()
        .error_for_status()
        .expect("anonymous JWKS")
        .json()
        .await
        .unwrap();
    let header = jsonwebtoken::decode_header(&token).unwrap();
    let jwk = jwks
        .find(header.kid.as_deref().expect("kid"))
        .expect("token's key is in the JWKS");
    let mut validation = jsonwebtoken::Validation::new(header.alg);
    validation.set_audience(&["api://AzureADTokenExchange"]);
    validation.set_issuer(&[cluster.issuer()]);
    let claims = jsonwebtoken::decode::<serde_json::Value>(
        &token,
        &jsonwebtoken::DecodingKey::from_jwk(jwk).unwrap(),
        &validation,
    )
    .expect("signature, issuer and audience verify")
    .claims;
    assert_eq!(
        claims["sub"],
        format!("system:serviceaccount:{}:workload", ns.name)
    );

    // A token signed by another key does not verify.
    let mut forged = token.clone();
    forged.truncate(forged.rfind('.').unwrap());
    forged.push_str(".AAAA");
    assert!(
        jsonwebtoken::decode::<serde_json::Value>(
            &forged,
            &jsonwebtoken::DecodingKey::from_jwk(jwk).unwrap(),
            &validation
        )
        .is_err()
    );
}

#[tokio::test]
async fn crds_are_established_and_rbac_denies_anonymous_reads() {
    let cluster = Cluster::shared();
    let ns = cluster.namespace("rbac").await;
    // CRDs are served.
    let ids: Api<AzureIdentity> = Api::namespaced(ns.client.clone(), &ns.name);
    assert!(
        ids.list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
    // Anonymous users may read discovery, but not pods (RBAC is on).
    let anon = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cluster.ca_pem().as_bytes()).unwrap())
        .build()
        .unwrap();
    let status = anon
        .get(format!(
            "{}/api/v1/namespaces/{}/pods",
            cluster.server(),
            ns.name
        ))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status.as_u16(), 403);
}
