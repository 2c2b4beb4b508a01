//! Attack: a path that is not canonical reaches the real IMDS as another path than the one the
//! agent routed (dot segments, `%2e`, backslashes), so a pod takes a token for any identity on
//! its scale set or reads instance metadata past `--block-instance-metadata`.
//!
//! The agent runs in-process with the production token sources, in front of the Azure
//! emulator's IMDS for a scale-set instance that holds the attacker's own identity and a
//! victim's. Requests are written on raw TCP from the attacker pod's address, since HTTP
//! clients clean such paths before sending.

use podid_crds::policy::Mode;
use podid_nmi::request::{PathError, Route, check_path, route};
use podid_nmi::server::ServerConfig;
use podid_nmi::token::imds_url;

use crate::common::{binding, msi, pod};
use crate::lenient::lenient_reading;
use crate::scene::{Scene, raw_get, token_query};

const ATTACKER_IP: &str = "127.10.9.5";

/// Identities `mine` (bound to the attacker's pod) and `victim` (bound to no pod of the
/// attacker's) on the scale set; the agent in managed mode.
async fn scene(block_instance_metadata: bool) -> Scene {
    let config = ServerConfig {
        mode: Mode::Managed,
        block_instance_metadata,
        ..Default::default()
    };
    let s = Scene::start(config, &["mine", "victim"]).await;
    let mine = s.client_id("mine").to_owned();
    s.view.update(|st| {
        st.pods = vec![pod("team", "attacker", Some("mine"), ATTACKER_IP)];
        st.bindings = vec![binding("team", "mine", "mine", "mine")];
        st.identities = vec![msi("team", "mine", &mine)];
    });
    s
}

/// The path spellings of the token path that a URL parser or a lenient server reads as it.
fn disguised_token_paths() -> Vec<&'static str> {
    vec![
        "/metadata/x/../identity/oauth2/token",
        "/metadata/identity/x/../oauth2/token",
        "/./metadata/identity/oauth2/token",
        "/%2e/metadata/identity/oauth2/token",
        "/%2E%2E/metadata/identity/oauth2/token",
        "/x/%2e%2e/metadata/identity/oauth2/token",
        "//metadata/identity/oauth2/token",
        "/metadata//identity/oauth2/token",
        "/metadata\\identity/oauth2/token",
        "/metadata\\identity\\oauth2\\token",
        "/metadata/identity%2Foauth2%2Ftoken",
        "/metadata/IDENTITY/OAUTH2/TOKEN",
        "/metadata/identity/oauth2/token/..",
    ]
}

#[tokio::test]
async fn non_canonical_token_paths_never_get_a_victims_token() {
    let s = scene(false).await;
    for path in disguised_token_paths() {
        let target = format!(
            "{path}?{}",
            token_query(&format!("client_id={}", s.client_id("victim")))
        );
        let a = raw_get(s.agent, ATTACKER_IP, &target).await;
        assert!(
            !a.body.contains("access_token"),
            "{path}: the attacker got a token: {} {}",
            a.status,
            a.body
        );
        assert!(
            matches!(a.status, 301 | 400),
            "{path}: expected a redirect to the clean path or 400, got {} {}",
            a.status,
            a.body
        );
    }
    assert_eq!(
        s.emu.call_count("GET imds.token"),
        0,
        "IMDS was asked for a token: {:?}",
        s.emu.calls()
    );
}

#[tokio::test]
async fn dot_segment_token_path_is_redirected_then_refused_as_not_bound() {
    let s = scene(false).await;
    let query = token_query(&format!("client_id={}", s.client_id("victim")));
    let a = raw_get(
        s.agent,
        ATTACKER_IP,
        &format!("/metadata/x/../identity/oauth2/token?{query}"),
    )
    .await;
    assert_eq!(a.status, 301, "{}", a.body);
    let location = a.location.expect("a Location header");
    assert_eq!(location, format!("/metadata/identity/oauth2/token?{query}"));
    // Following the redirect, as SDKs do, the request is authorised like any other.
    let followed = raw_get(s.agent, ATTACKER_IP, &location).await;
    assert_eq!(followed.status, 403, "{}", followed.body);
    assert!(!followed.body.contains("access_token"));
    assert_eq!(s.emu.call_count("GET imds.token"), 0);
    // The pod's own identity is still served.
    let mine = raw_get(
        s.agent,
        ATTACKER_IP,
        &format!("/metadata/identity/oauth2/token?{}", token_query("")),
    )
    .await;
    assert_eq!(mine.status, 200, "{}", mine.body);
    assert_eq!(s.token_holder(&mine.body).as_deref(), Some("mine"));
}

#[tokio::test]
async fn non_canonical_instance_paths_do_not_pass_the_instance_block() {
    let s = scene(true).await;
    for path in [
        "/x/../metadata/instance",
        "/./metadata/instance",
        "/%2e/metadata/instance",
        "//metadata/instance",
        "/metadata\\instance",
        "/metadata/INSTANCE",
        "/metadata/Instance/compute",
    ] {
        let a = raw_get(
            s.agent,
            ATTACKER_IP,
            &format!("{path}?api-version=2021-02-01"),
        )
        .await;
        assert!(
            matches!(a.status, 301 | 400 | 403),
            "{path}: {} {}",
            a.status,
            a.body
        );
    }
    assert_eq!(
        s.emu.call_count("GET imds.instance"),
        0,
        "IMDS was asked for instance metadata: {:?}",
        s.emu.calls()
    );
}

#[test]
fn every_path_the_agent_forwards_is_the_path_it_routed() {
    // Every path of up to four segments over spellings that parsers treat specially.
    let parts = [
        "",
        ".",
        "..",
        "%2e",
        "%2E%2e",
        "metadata",
        "METADATA",
        "identity",
        "Identity",
        "oauth2",
        "token",
        "instance",
        "x",
        "identity\\oauth2",
        "%2f",
        "metadata%2fidentity",
        ";",
        "..;",
        "metadata;x",
    ];
    let base = url::Url::parse("http://169.254.169.254:80/").unwrap();
    let mut checked = 0;
    let mut paths = vec![String::new()];
    for _ in 0..4 {
        let mut next = Vec::new();
        for p in &paths {
            for seg in parts {
                next.push(format!("{p}/{seg}"));
            }
        }
        for path in &next {
            for block in [false, true] {
                match check_path(path, None) {
                    Ok(()) => {}
                    Err(PathError::NotClean { location }) => {
                        assert_eq!(check_path(&location, None), Ok(()), "{path} -> {location}");
                        continue;
                    }
                    Err(PathError::Malformed) => continue,
                }
                let r = route(path, block);
                let sent = imds_url(&base, path).expect("a canonical path is forwarded as is");
                assert_eq!(sent.path(), path, "forwarded path differs from routed path");
                if r == Route::Proxy {
                    let seen = lenient_reading(sent.path());
                    assert!(
                        !seen.starts_with("/metadata/identity/oauth2/token"),
                        "{path} is proxied but reads as {seen}"
                    );
                    if block {
                        assert!(
                            !seen.starts_with("/metadata/instance"),
                            "{path} passes the instance block as {seen}"
                        );
                    }
                }
                checked += 1;
            }
        }
        paths = next;
    }
    assert!(checked > 10_000, "only {checked} paths checked");
}

#[test]
fn redirect_keeps_the_query_and_the_trailing_slash() {
    assert_eq!(
        check_path("/metadata/./instance/", Some("api-version=1")),
        Err(PathError::NotClean {
            location: "/metadata/instance/?api-version=1".into()
        })
    );
    assert_eq!(
        check_path("/../../metadata/instance", None),
        Err(PathError::NotClean {
            location: "/metadata/instance".into()
        })
    );
    assert_eq!(
        check_path("metadata/instance", None),
        Err(PathError::Malformed)
    );
    assert_eq!(check_path("/metadata/instance", Some("a=%2e%2e")), Ok(()));
}

#[tokio::test]
async fn upstream_redirect_to_the_token_path_is_not_followed_by_the_agent() {
    // A server behind the agent that redirects a harmless path to the token path, and would
    // answer that with a token.
    let token_asked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let asked = token_asked.clone();
    let upstream = axum::Router::new()
        .route(
            "/metadata/versions",
            axum::routing::get(|| async {
                (
                    axum::http::StatusCode::FOUND,
                    [(
                        "location",
                        "/metadata/identity/oauth2/token?resource=https://vault.azure.net",
                    )],
                )
            }),
        )
        .route(
            "/metadata/identity/oauth2/token",
            axum::routing::get(move || {
                asked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                async { axum::Json(serde_json::json!({"access_token": "leaked"})) }
            }),
        );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, upstream).await.unwrap() });
    let config = ServerConfig {
        mode: Mode::Managed,
        ..Default::default()
    };
    let s = Scene::start_proxying_to(
        config,
        &["mine"],
        Some(url::Url::parse(&format!("http://{addr}/")).unwrap()),
    )
    .await;
    s.view.update(|st| {
        st.pods = vec![pod("team", "attacker", None, ATTACKER_IP)];
    });
    let a = raw_get(
        s.agent,
        ATTACKER_IP,
        "/metadata/versions?api-version=2021-02-01",
    )
    .await;
    assert_eq!(a.status, 302, "{}", a.body);
    assert!(!a.body.contains("leaked"), "{}", a.body);
    assert_eq!(
        token_asked.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the agent followed the redirect to the token path"
    );
    // The pod following it itself goes through the agent's checks: it has no identity.
    let followed = raw_get(s.agent, ATTACKER_IP, &a.location.unwrap()).await;
    assert_eq!(followed.status, 404, "{}", followed.body);
    assert_eq!(token_asked.load(std::sync::atomic::Ordering::SeqCst), 0);
}
