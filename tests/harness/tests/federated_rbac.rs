//! deploy/manifests/podid-nmi-federated.yaml on a real API server: the node agent's account may mint
//! ServiceAccount tokens only for the token exchange. The shipped manifests themselves are
//! applied (their RBAC and admission objects), and every request is made with a real token of
//! the agent's ServiceAccount, as the agent makes it.

use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenReview};
use k8s_openapi::api::core::v1::{Pod, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, RoleBinding};
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::GroupVersionKind;
use kube::{Client, Config};
use podid_testkit::Cluster;
use podid_testkit::builders::obj;
use serde::Deserialize;
use serde_json::{Value, json};

const BASE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../deploy/manifests/podid-nmi.yaml"
);
const FEDERATED: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../deploy/manifests/podid-nmi-federated.yaml"
);
const AGENT: &str = "system:serviceaccount:default:podid-nmi";
const EXCHANGE: &str = "api://AzureADTokenExchange";
const POLICY: &str = "ValidatingAdmissionPolicy 'podid-nmi-token-requests'";

fn documents(path: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde_yaml::from_value(serde_yaml::Value::deserialize(d).unwrap()).unwrap())
        .collect()
}

/// Server-side applies the documents of `path` whose kind is in `kinds`, as written.
async fn apply(client: &Client, path: &str, kinds: &[&str]) {
    for doc in documents(path) {
        let kind = doc["kind"].as_str().unwrap();
        if !kinds.contains(&kind) {
            continue;
        }
        let (group, version) = match doc["apiVersion"].as_str().unwrap().split_once('/') {
            Some((g, v)) => (g, v),
            None => ("", doc["apiVersion"].as_str().unwrap()),
        };
        let (resource, _) =
            kube::discovery::pinned_kind(client, &GroupVersionKind::gvk(group, version, kind))
                .await
                .unwrap_or_else(|e| panic!("{kind}: {e}"));
        let name = doc["metadata"]["name"].as_str().unwrap();
        let api: Api<DynamicObject> = match doc["metadata"]["namespace"].as_str() {
            Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
            None => Api::all_with(client.clone(), &resource),
        };
        api.patch(
            name,
            &PatchParams::apply("podid-test").force(),
            &Patch::Apply(&doc),
        )
        .await
        .unwrap_or_else(|e| panic!("apply {kind} {name} from {path}: {e}"));
    }
}

/// A client authenticating with `token` (a bearer token, no client certificate).
async fn client_with_token(cluster: &Cluster, token: &str) -> Client {
    let kubeconfig = json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "c", "cluster": {
            "server": cluster.server(),
            "certificate-authority": cluster.ca_file(),
        }}],
        "users": [{"name": "u", "user": {"token": token}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "c",
    });
    let kc = kube::config::Kubeconfig::from_yaml(&kubeconfig.to_string()).unwrap();
    let cfg = Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    Client::try_from(cfg).unwrap()
}

/// A TokenRequest for ServiceAccount `ns/sa` with `spec`.
async fn token_request(client: &Client, ns: &str, sa: &str, spec: Value) -> kube::Result<String> {
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    let tr: TokenRequest = obj(json!({
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec
    }));
    let tr: TokenRequest = sas
        .create_subresource("token", sa, &PostParams::default(), &tr)
        .await?;
    Ok(tr.status.map(|s| s.token).unwrap_or_default())
}

/// The API error of a refused request: (HTTP code, message).
fn refusal(result: kube::Result<String>, what: &str) -> (u16, String) {
    match result {
        Err(kube::Error::Api(e)) => (e.code, e.message),
        Err(e) => panic!("{what}: not an API error: {e}"),
        Ok(_) => panic!("{what}: allowed"),
    }
}

/// Asserts the request was refused by the shipped policy, with a message naming `names`.
fn assert_policy_denied(result: kube::Result<String>, what: &str, names: &[&str]) {
    let (code, message) = refusal(result, what);
    assert_eq!(code, 403, "{what}: {message}");
    assert!(
        message.contains(POLICY),
        "{what}: not the policy: {message}"
    );
    for n in names {
        assert!(
            message.contains(n),
            "{what}: message lacks {n:?}: {message}"
        );
    }
}

/// Whether the API server authenticates `token` as a bearer token (a TokenReview with the API
/// server's own audiences), and what a request with it gets (HTTP status).
async fn api_server_accepts(cluster: &Cluster, admin: &Client, token: &str) -> (bool, u16) {
    let reviews: Api<TokenReview> = Api::all(admin.clone());
    let review = reviews
        .create(
            &PostParams::default(),
            &obj(
                json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                        "spec": {"token": token}}),
            ),
        )
        .await
        .expect("TokenReview");
    let authenticated = review.status.and_then(|s| s.authenticated).unwrap_or(false);
    let http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cluster.ca_pem().as_bytes()).unwrap())
        .build()
        .unwrap();
    let status = http
        .get(format!("{}/api", cluster.server()))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16();
    (authenticated, status)
}

#[tokio::test]
async fn the_agent_may_mint_exchange_tokens_only() {
    let cluster = Cluster::shared_async().await;
    let ns = cluster.namespace("fed-rbac").await;
    let admin = ns.client.clone();

    // The agent's account as deploy/manifests/podid-nmi.yaml ships it, and a real token of it.
    apply(
        &admin,
        BASE,
        &["ServiceAccount", "ClusterRole", "ClusterRoleBinding"],
    )
    .await;
    let agent_token =
        podid_testkit::projected_token(&admin, "default", "podid-nmi", cluster.issuer())
            .await
            .expect("a token of the agent's ServiceAccount");
    let agent = client_with_token(cluster, &agent_token).await;
    let who = api_server_accepts(cluster, &admin, &agent_token).await;
    assert_eq!(who, (true, 200), "the agent's own token authenticates");

    // A workload: its ServiceAccount and a pod running as it.
    let sas: Api<ServiceAccount> = Api::namespaced(admin.clone(), &ns.name);
    sas.create(
        &PostParams::default(),
        &obj(json!({"metadata": {"name": "workload"}})),
    )
    .await
    .unwrap();
    let pods: Api<Pod> = Api::namespaced(admin.clone(), &ns.name);
    let pod = pods
        .create(
            &PostParams::default(),
            &obj(json!({
                "metadata": {"name": "app"},
                "spec": {"serviceAccountName": "workload",
                         "containers": [{"name": "app", "image": "registry.invalid/app:1"}]}
            })),
        )
        .await
        .unwrap();
    let pod_ref = json!({"kind": "Pod", "apiVersion": "v1", "name": "app",
                         "uid": pod.metadata.uid.clone().unwrap()});
    let exchange_bound = json!({"audiences": [EXCHANGE], "expirationSeconds": 600,
                                "boundObjectRef": pod_ref});

    // e. Without the federated ClusterRole the agent may not mint tokens at all.
    let (code, message) = refusal(
        token_request(&agent, &ns.name, "workload", exchange_bound.clone()).await,
        "TokenRequest before podid-nmi-federated",
    );
    assert_eq!(code, 403, "{message}");
    assert!(
        message.contains(&format!(
            "User \"{AGENT}\" cannot create resource \"serviceaccounts/token\""
        )),
        "forbidden by RBAC: {message}"
    );

    // The federated manifest as shipped: role, binding, policy and its binding.
    apply(
        &admin,
        FEDERATED,
        &[
            "ClusterRole",
            "ClusterRoleBinding",
            "ValidatingAdmissionPolicy",
            "ValidatingAdmissionPolicyBinding",
        ],
    )
    .await;
    let roles: Api<ClusterRole> = Api::all(admin.clone());
    let role = roles.get("podid-nmi-federated").await.unwrap();
    let rules: Vec<(Vec<String>, Vec<String>, Vec<String>)> = role
        .rules
        .unwrap_or_default()
        .into_iter()
        .map(|r| {
            (
                r.api_groups.unwrap_or_default(),
                r.resources.unwrap_or_default(),
                r.verbs,
            )
        })
        .collect();
    let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        rules,
        vec![
            (s(&[""]), s(&["serviceaccounts/token"]), s(&["create"])),
            (
                s(&["podid.dev"]),
                s(&["workloadmigrations"]),
                s(&["get", "list", "watch"])
            ),
        ],
        "the federated role grants nothing else"
    );
    cluster.assert_cannot(
        AGENT,
        &[
            ("create", "serviceaccounts"),
            ("get", "serviceaccounts"),
            ("create", "workloadmigrations.podid.dev"),
            ("update", "workloadmigrations.podid.dev"),
            ("create", "tokenreviews.authentication.k8s.io"),
        ],
    );

    // b. The API server's own audience (or none, which means the API server's): refused by
    // the policy. Policy and RBAC become active shortly after creation: poll until the
    // refusal is the policy's, within a deadline.
    let deadline = Instant::now() + Duration::from_secs(30);
    let api_audience = json!({"audiences": [cluster.issuer()], "expirationSeconds": 600,
                              "boundObjectRef": pod_ref});
    loop {
        let r = token_request(&agent, &ns.name, "workload", api_audience.clone()).await;
        match &r {
            Err(kube::Error::Api(e)) if e.message.contains(POLICY) => {
                assert_policy_denied(r, "API server audience", &[EXCHANGE, cluster.issuer()]);
                break;
            }
            _ if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            other => panic!("the policy is not active after 30s: {other:?}"),
        }
    }
    assert_policy_denied(
        token_request(
            &agent,
            &ns.name,
            "workload",
            json!({"expirationSeconds": 600, "boundObjectRef": pod_ref}),
        )
        .await,
        // The API server fills in its own audiences before admission.
        "no audience",
        &[EXCHANGE, cluster.issuer()],
    );
    assert_policy_denied(
        token_request(
            &agent,
            &ns.name,
            "workload",
            json!({"audiences": [EXCHANGE, cluster.issuer()], "expirationSeconds": 600,
                   "boundObjectRef": pod_ref}),
        )
        .await,
        "the exchange audience and the API server's",
        &[cluster.issuer()],
    );

    // a. What the agent asks for: allowed; the token is useless against the API server.
    let token = token_request(&agent, &ns.name, "workload", exchange_bound.clone())
        .await
        .expect("exchange token bound to the pod");
    assert_eq!(
        api_server_accepts(cluster, &admin, &token).await,
        (false, 401),
        "an exchange token does not authenticate to the API server"
    );
    // (The same ServiceAccount's token for the API server's audience does: the check can fail.)
    let control = podid_testkit::projected_token(&admin, &ns.name, "workload", cluster.issuer())
        .await
        .unwrap();
    assert!(api_server_accepts(cluster, &admin, &control).await.0);

    // c. Unbound: 600 s allowed, 3600 s refused.
    token_request(
        &agent,
        &ns.name,
        "workload",
        json!({"audiences": [EXCHANGE], "expirationSeconds": 600}),
    )
    .await
    .expect("unbound exchange token of 600 s");
    assert_policy_denied(
        token_request(
            &agent,
            &ns.name,
            "workload",
            json!({"audiences": [EXCHANGE], "expirationSeconds": 3600}),
        )
        .await,
        "unbound, 3600 s",
        &["not bound to a Pod", "600 seconds", "3600 seconds"],
    );

    // d. Bound but longer than an hour: refused. An hour bound: allowed.
    assert_policy_denied(
        token_request(
            &agent,
            &ns.name,
            "workload",
            json!({"audiences": [EXCHANGE], "expirationSeconds": 7200, "boundObjectRef": pod_ref}),
        )
        .await,
        "bound, 7200 s",
        &["at most 3600 seconds", "7200 seconds"],
    );
    token_request(
        &agent,
        &ns.name,
        "workload",
        json!({"audiences": [EXCHANGE], "expirationSeconds": 3600, "boundObjectRef": pod_ref}),
    )
    .await
    .expect("bound exchange token of 3600 s");

    // Bound to anything but a Pod (a Secret lives as long as nobody deletes it): refused.
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), &ns.name);
    let secret = secrets
        .create(
            &PostParams::default(),
            &obj(json!({"metadata": {"name": "anchor"}})),
        )
        .await
        .unwrap();
    assert_policy_denied(
        token_request(
            &agent,
            &ns.name,
            "workload",
            json!({"audiences": [EXCHANGE], "expirationSeconds": 600,
                   "boundObjectRef": {"kind": "Secret", "apiVersion": "v1", "name": "anchor",
                                      "uid": secret.metadata.uid.unwrap()}}),
        )
        .await,
        "bound to a Secret",
        &["Pod only", "Secret"],
    );

    // f. Another account with the same verb is not confined by the policy: its own RBAC
    // decides (refused without a grant; with one, any audience and expiry).
    let other_name = format!("system:serviceaccount:{}:other-minter", ns.name);
    let other = cluster.client_as(&other_name).await.unwrap();
    let anything = json!({"audiences": [cluster.issuer()], "expirationSeconds": 7200});
    let (code, message) = refusal(
        token_request(&other, &ns.name, "workload", anything.clone()).await,
        "another account without RBAC",
    );
    assert_eq!(code, 403, "{message}");
    assert!(!message.contains(POLICY), "{message}");
    let bindings: Api<RoleBinding> = Api::namespaced(admin.clone(), &ns.name);
    bindings
        .create(
            &PostParams::default(),
            &obj(json!({
                "metadata": {"name": "other-minter"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                            "name": "podid-nmi-federated"},
                "subjects": [{"kind": "ServiceAccount", "name": "other-minter",
                              "namespace": ns.name}]
            })),
        )
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let token = loop {
        match token_request(&other, &ns.name, "workload", anything.clone()).await {
            Ok(t) => break t,
            Err(kube::Error::Api(e))
                if e.code == 403 && !e.message.contains(POLICY) && Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("another account with RBAC: {e}"),
        }
    };
    assert!(
        api_server_accepts(cluster, &admin, &token).await.0,
        "its API-audience token authenticates"
    );
}
