//! Attack: a pod names, in one request, an identity whose grant was revoked (its record not yet
//! deleted by the controller) beside one it is still granted (`client_id=<revoked>` and
//! `msi_res_id=<granted>`): the "not bound" check passes on the granted one, and selection must
//! still never pick the revoked one.

use podid_crds::AssignedIdentityState::Assigned;
use podid_crds::policy::Mode;
use podid_nmi::server::ServerConfig;

use crate::common::{assigned, binding, msi, pod, rid};
use crate::scene::{Scene, raw_get, token_query};

const POD_IP: &str = "127.10.9.21";

/// The pod was bound to `a-revoked` and `b-granted` (names in the order records are chosen
/// in); the binding to `a-revoked` is gone, its record
/// (still `Assigned`) is not yet.
async fn scene() -> Scene {
    let config = ServerConfig {
        mode: Mode::Standard,
        ..Default::default()
    };
    let s = Scene::start(config, &["a-revoked", "b-granted"]).await;
    let (revoked, granted) = (
        msi("team", "a-revoked", s.client_id("a-revoked")),
        msi("team", "b-granted", s.client_id("b-granted")),
    );
    let p = pod("team", "app", Some("app"), POD_IP);
    s.view.update(|st| {
        st.assigned = vec![
            assigned(&p, &revoked, Assigned),
            assigned(&p, &granted, Assigned),
        ];
        st.pods = vec![p];
        st.bindings = vec![binding("team", "bind-b-granted", "b-granted", "app")];
        st.identities = vec![revoked, granted];
    });
    s
}

fn encode(v: &str) -> String {
    url::form_urlencoded::byte_serialize(v.as_bytes()).collect()
}

#[tokio::test]
async fn revoked_identity_named_beside_a_granted_one_is_not_served() {
    let s = scene().await;
    let query = token_query(&format!(
        "client_id={}&msi_res_id={}",
        s.client_id("a-revoked"),
        encode(&rid("b-granted"))
    ));
    let a = raw_get(
        s.agent,
        POD_IP,
        &format!("/metadata/identity/oauth2/token?{query}"),
    )
    .await;
    assert_ne!(
        s.token_holder(&a.body).as_deref(),
        Some("a-revoked"),
        "the revoked identity was served"
    );
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(s.token_holder(&a.body).as_deref(), Some("b-granted"));
}

#[tokio::test]
async fn revoked_identity_alone_is_refused_and_unnamed_request_gets_the_granted_one() {
    let s = scene().await;
    let by_client = raw_get(
        s.agent,
        POD_IP,
        &format!(
            "/metadata/identity/oauth2/token?{}",
            token_query(&format!("client_id={}", s.client_id("a-revoked")))
        ),
    )
    .await;
    assert_eq!(by_client.status, 403, "{}", by_client.body);
    // The pending record does not make the pod's only grant ambiguous.
    let unnamed = raw_get(
        s.agent,
        POD_IP,
        &format!("/metadata/identity/oauth2/token?{}", token_query("")),
    )
    .await;
    assert_eq!(unnamed.status, 200, "{}", unnamed.body);
    assert_eq!(s.token_holder(&unnamed.body).as_deref(), Some("b-granted"));
}
