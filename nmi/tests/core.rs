//! Pure parts of the node agent: request parsing and routing, the wait for assignment,
//! selection in both modes, the token cache and the iptables payload.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::*;
use http::HeaderMap;
use podid_crds::AssignedIdentityState::{Assigned, Created, Legacy};
use podid_crds::index::IdentityIndex;
use podid_crds::policy::IdentityRequest;
use podid_nmi::cache::{CacheKey, Clock, TokenCache};
use podid_nmi::iptables::{
    RuleSpec, chain_is_current, conntrack_delete_args, count_jumps, parse_conntrack_deleted,
    render_cleanup, render_restore,
};
use podid_nmi::request::{self, RequestError, Route, parse_host_token, parse_token_query, route};
use podid_nmi::resolve::MultipleIdentities;
use podid_nmi::resolve::{
    ResolveError, is_exempt, select_assigned, select_managed, standard_grants, standard_preflight,
};
use podid_nmi::token::{AccessToken, client_secret_value};
use podid_nmi::wait::{RetryPolicy, WaitError, WaitStep, wait_step};
use pretty_assertions::assert_eq;

// ---------- request parsing ----------

#[test]
fn metadata_header_is_required_exactly_true() {
    let mut h = HeaderMap::new();
    let err = request::check_metadata_header(&h, true).unwrap_err();
    let reply = err.reply();
    assert_eq!(reply.status, 400);
    assert_eq!(reply.content_type, "application/json; charset=utf-8");
    assert_eq!(
        reply.body,
        "{\"error\":\"invalid_request\",\"error_description\":\"Required metadata header not specified\"}\n"
    );
    h.insert("Metadata", "True".parse().unwrap());
    assert!(
        request::check_metadata_header(&h, true).is_err(),
        "value is case-sensitive"
    );
    h.insert("metadata", "true".parse().unwrap());
    assert!(
        request::check_metadata_header(&h, true).is_ok(),
        "name is case-insensitive"
    );
    assert!(request::check_metadata_header(&HeaderMap::new(), false).is_ok());
}

#[test]
fn resource_is_required() {
    for q in [
        None,
        Some(""),
        Some("api-version=2018-02-01"),
        Some("resource="),
    ] {
        let err = parse_token_query(q).unwrap_err();
        assert_eq!(err, RequestError::MissingResource);
        let reply = err.reply();
        assert_eq!(
            (reply.status, reply.body.as_str()),
            (400, "parameter resource cannot be empty\n")
        );
        assert_eq!(reply.content_type, "text/plain; charset=utf-8");
    }
}

#[test]
fn parses_selectors_and_aliases() {
    let r = parse_token_query(Some(
        "api-version=2018-02-01&resource=https%3A%2F%2Fvault.azure.net&client_id=ABC",
    ))
    .unwrap();
    assert_eq!(r.resource, "https://vault.azure.net");
    assert_eq!(r.identity.client_id.as_deref(), Some("ABC"));
    assert_eq!(r.api_version.as_deref(), Some("2018-02-01"));

    let r = parse_token_query(Some("resource=r&mi_res_id=/x")).unwrap();
    assert_eq!(r.identity.resource_id.as_deref(), Some("/x"));
    let r = parse_token_query(Some("resource=r&mi_res_id=/alias&msi_res_id=/main")).unwrap();
    assert_eq!(
        r.identity.resource_id.as_deref(),
        Some("/main"),
        "msi_res_id wins"
    );

    let r = parse_token_query(Some("resource=r&client_id=")).unwrap();
    assert!(r.identity.is_unspecified(), "empty values are absent");
    let r = parse_token_query(Some("resource=first&resource=second")).unwrap();
    assert_eq!(r.resource, "first");
}

#[test]
fn object_id_alone_is_refused_clearly() {
    let err = parse_token_query(Some("resource=r&object_id=123")).unwrap_err();
    let reply = err.reply();
    assert_eq!(reply.status, 400);
    assert!(reply.body.contains("object_id"), "{}", reply.body);
    // With another selector, object_id is carried along and does not block the request.
    assert!(parse_token_query(Some("resource=r&object_id=1&client_id=c")).is_ok());
}

#[test]
fn host_token_requires_pod_headers_then_localhost() {
    let local = "127.0.0.1".parse().unwrap();
    let other = "10.0.0.4".parse().unwrap();
    let err = parse_host_token(&HeaderMap::new(), local, Some("resource=r")).unwrap_err();
    assert_eq!(
        (err.reply().status, err.reply().body),
        (
            400,
            "missing 'podname' and 'podns' from request header\n".into()
        )
    );
    let mut h = HeaderMap::new();
    h.insert("podns", "ns".parse().unwrap());
    h.insert("podname", "p".parse().unwrap());
    let err = parse_host_token(&h, other, Some("resource=r")).unwrap_err();
    assert_eq!(
        (err.reply().status, err.reply().body),
        (500, "request remote address is not from a host\n".into())
    );
    assert_eq!(
        parse_host_token(&h, local, None).unwrap_err(),
        RequestError::MissingResource
    );
    let ok = parse_host_token(&h, local, Some("resource=r&client_id=c")).unwrap();
    assert_eq!(
        (ok.pod_namespace.as_str(), ok.pod_name.as_str()),
        ("ns", "p")
    );
    assert_eq!(ok.token.identity.client_id.as_deref(), Some("c"));
}

#[test]
fn routes_like_the_original() {
    let cases = [
        ("/metadata/identity/oauth2/token", false, Route::Token),
        ("/Metadata/identity/oauth2/token", false, Route::Token),
        ("/METADATA/identity/oauth2/token/", false, Route::Token),
        ("/metadata/identity/oauth2/tokenXYZ", false, Route::Token),
        // podid: other spellings of the token path are refused, in any case and anywhere.
        (
            "/metadata/Identity/oauth2/token",
            false,
            Route::InvalidToken,
        ),
        (
            "/x/METADATA/IDENTITY/OAUTH2/TOKEN",
            false,
            Route::InvalidToken,
        ),
        ("/metadata/INSTANCE/compute", true, Route::BlockedInstance),
        (
            "/metadata/identity\\oauth2\\token/",
            false,
            Route::InvalidToken,
        ),
        (
            "/metadata/identity/oauth2\\token",
            false,
            Route::InvalidToken,
        ),
        ("/host/token", false, Route::HostToken),
        ("/host/token/", false, Route::HostToken),
        ("/metadata/instance", false, Route::Proxy),
        ("/metadata/instance", true, Route::BlockedInstance),
        ("/Metadata/instance/compute", true, Route::BlockedInstance),
        ("/metadata/scheduledevents", true, Route::Proxy),
        ("/", false, Route::Proxy),
        ("/m", false, Route::Proxy),
    ];
    for (path, block, want) in cases {
        assert_eq!(route(path, block), want, "{path} block={block}");
    }
    let r = RequestError::InvalidPath.reply();
    assert_eq!((r.status, r.body.as_str()), (400, "Invalid request\n"));
}

// ---------- waiting for assignment (standard mode) ----------

fn policy() -> RetryPolicy {
    RetryPolicy::default()
}

fn unspecified() -> IdentityRequest {
    IdentityRequest::default()
}

fn by_client(id: &str) -> IdentityRequest {
    IdentityRequest {
        client_id: Some(id.into()),
        ..Default::default()
    }
}

fn served(step: WaitStep) -> Vec<String> {
    match step {
        WaitStep::Serve(ids) => ids.into_iter().map(|i| i.spec.client_id).collect(),
        other => panic!("expected Serve, got {other:?}"),
    }
}

#[test]
fn unspecified_request_waits_for_assigned_then_serves_all_assigned() {
    let p = pod("ns", "p", Some("sel"), "10.0.0.5");
    let a = msi("ns", "a", "client-a");
    let b = msi("ns", "b", "client-b");
    let created = [assigned(&p, &a, Created)];
    assert!(matches!(
        wait_step(&unspecified(), &created, 0, &policy(), "ns/p"),
        WaitStep::Retry
    ));
    assert!(matches!(
        wait_step(&unspecified(), &created, 18, &policy(), "ns/p"),
        WaitStep::Retry
    ));
    let mixed = [assigned(&p, &a, Assigned), assigned(&p, &b, Created)];
    assert_eq!(
        served(wait_step(&unspecified(), &mixed, 3, &policy(), "ns/p")),
        ["client-a"]
    );
    // Objects of pre-1.5 controllers (empty status) are served at once, before Assigned ones.
    let legacy = [assigned(&p, &a, Assigned), assigned(&p, &b, Legacy)];
    assert_eq!(
        served(wait_step(&unspecified(), &legacy, 0, &policy(), "ns/p")),
        ["client-b"]
    );
}

#[test]
fn nothing_created_fails_after_the_created_attempts() {
    let step = wait_step(&unspecified(), &[], 15, &policy(), "ns/p");
    assert!(matches!(step, WaitStep::Retry));
    let WaitStep::Fail(e) = wait_step(&unspecified(), &[], 16, &policy(), "ns/p") else {
        panic!("expected failure")
    };
    assert_eq!(
        e.to_string(),
        "getting assigned identities for pod ns/p in CREATED state failed after 16 attempts, retry duration [5]s, error: <nil>. Check MIC pod logs for identity assignment errors"
    );
}

#[test]
fn stuck_in_created_fails_after_all_attempts() {
    let p = pod("ns", "p", Some("sel"), "10.0.0.5");
    let a = msi("ns", "a", "client-a");
    let created = [assigned(&p, &a, Created)];
    let WaitStep::Fail(e) = wait_step(&by_client("CLIENT-A"), &created, 19, &policy(), "ns/p")
    else {
        panic!("expected failure")
    };
    assert!(
        matches!(e, WaitError::NotAssigned { attempts: 20, .. }),
        "{e}"
    );
    assert!(
        e.to_string()
            .contains("in ASSIGNED state failed after 20 attempts")
    );
}

#[test]
fn specified_request_matches_case_insensitively_and_by_resource_id() {
    let p = pod("ns", "p", Some("sel"), "10.0.0.5");
    let a = msi("ns", "a", "client-a");
    let ready = [assigned(&p, &a, Assigned)];
    assert_eq!(
        served(wait_step(
            &by_client("CLIENT-A"),
            &ready,
            0,
            &policy(),
            "ns/p"
        )),
        ["client-a"]
    );
    let by_rid = IdentityRequest {
        resource_id: Some(rid("a").to_uppercase()),
        ..Default::default()
    };
    assert_eq!(
        served(wait_step(&by_rid, &ready, 0, &policy(), "ns/p")),
        ["client-a"]
    );
    // A different identity is not "requested": keep waiting, then give up.
    assert!(matches!(
        wait_step(&by_client("other"), &ready, 0, &policy(), "ns/p"),
        WaitStep::Retry
    ));
    assert!(matches!(
        wait_step(&by_client("other"), &ready, 16, &policy(), "ns/p"),
        WaitStep::Fail(_)
    ));
}

#[test]
fn custom_attempts_are_honoured() {
    let short = RetryPolicy {
        created_attempts: 1,
        assigned_attempts: 1,
        interval: Duration::from_millis(1),
    };
    assert!(matches!(
        wait_step(&unspecified(), &[], 0, &short, "ns/p"),
        WaitStep::Retry
    ));
    assert!(matches!(
        wait_step(&unspecified(), &[], 1, &short, "ns/p"),
        WaitStep::Fail(WaitError::NotCreated { attempts: 1, .. })
    ));
}

// ---------- selection ----------

#[test]
fn standard_preflight_refuses_unbound_and_answers_unlabelled_pods_at_once() {
    let a = msi("ns", "a", "client-a");
    let b = msi("ns", "b", "client-b");
    let bindings = [binding("ns", "ba", "a", "sel-a")];
    let ids = [a, b];
    let bound = pod("ns", "p", Some("sel-a"), "10.0.0.5");
    let unbound = pod("ns", "q", None, "10.0.0.6");
    let index = IdentityIndex::from_objects(&bindings, &ids, []);
    let granted = |p| standard_grants(p, &index, false);

    assert!(standard_preflight(&bound, &unspecified(), &granted(&bound), false).is_ok());
    assert!(standard_preflight(&bound, &by_client("CLIENT-A"), &granted(&bound), false).is_ok());
    let e =
        standard_preflight(&bound, &by_client("client-b"), &granted(&bound), false).unwrap_err();
    assert_eq!(e.reply(false).status, 403);
    assert_eq!(
        e.reply(false).body,
        "the requested identity is not bound to pod ns/p\n"
    );

    let e = standard_preflight(&unbound, &unspecified(), &granted(&unbound), false).unwrap_err();
    assert_eq!(
        (e.reply(false).status, e.reply(false).body),
        (404, "no azure identity found for pod ns/q\n".into())
    );
    let e = standard_preflight(&unbound, &by_client("client-a"), &granted(&unbound), false)
        .unwrap_err();
    assert_eq!(e.reply(false).status, 403);
    // --wait-for-unbound-pods restores the original's wait.
    assert!(standard_preflight(&unbound, &unspecified(), &granted(&unbound), true).is_ok());
}

#[test]
fn select_assigned_one_none_several() {
    let p = pod("ns", "p", Some("sel"), "10.0.0.5");
    let a = msi("ns", "a", "client-a");
    let b = msi("other", "b", "client-b");
    let both = [a.clone(), b.clone()];
    assert_eq!(
        select_assigned(
            &p,
            &unspecified(),
            std::slice::from_ref(&a),
            &both,
            false,
            MultipleIdentities::Refuse
        )
        .unwrap()
        .spec
        .client_id,
        "client-a"
    );
    assert_eq!(
        select_assigned(
            &p,
            &by_client("Client-B"),
            &both,
            &both,
            false,
            MultipleIdentities::Refuse
        )
        .unwrap()
        .spec
        .client_id,
        "client-b"
    );
    let e = select_assigned(
        &p,
        &unspecified(),
        &both,
        &both,
        false,
        MultipleIdentities::Refuse,
    )
    .unwrap_err();
    assert!(matches!(e, ResolveError::Ambiguous { .. }));
    let r = e.reply(false);
    assert_eq!(r.status, 400);
    assert!(
        r.body.contains("Multiple user assigned identities exist") && r.body.contains("a, b"),
        "{}",
        r.body
    );
    // Namespaced: the identity in another namespace does not count.
    assert_eq!(
        select_assigned(
            &p,
            &unspecified(),
            &both,
            &both,
            true,
            MultipleIdentities::Refuse
        )
        .unwrap()
        .spec
        .client_id,
        "client-a"
    );
    let e = select_assigned(
        &p,
        &by_client("client-b"),
        &both,
        &both,
        true,
        MultipleIdentities::Refuse,
    )
    .unwrap_err();
    assert_eq!(e.reply(false).status, 403);
    let e = select_assigned(
        &p,
        &unspecified(),
        &[],
        &both,
        false,
        MultipleIdentities::Refuse,
    )
    .unwrap_err();
    assert_eq!(e.reply(false).status, 404);
}

#[test]
fn several_identities_unnamed_get_400_or_with_the_flag_the_first_by_binding() {
    // Bindings b1 (identity z) and b2 (identity a): "first" is by binding, not identity name.
    let p = pod("ns", "p", Some("sel"), "10.0.0.5");
    let ids = [msi("ns", "z", "client-z"), msi("ns", "a", "client-a")];
    let bindings = [
        binding("ns", "b1", "z", "sel"),
        binding("ns", "b2", "a", "sel"),
    ];
    let index = IdentityIndex::from_objects(&bindings, &ids, []);
    let e = select_managed(&p, &unspecified(), &index, MultipleIdentities::Refuse).unwrap_err();
    assert_eq!(e.reply(false).status, 400);
    assert!(e.to_string().contains("--multiple-identities=first"), "{e}");
    let first = select_managed(&p, &unspecified(), &index, MultipleIdentities::First).unwrap();
    assert_eq!(first.spec.client_id, "client-z");
    // Standard mode: the assigned copies, in binding order.
    let granted = standard_grants(&p, &index, false);
    let chosen = select_assigned(
        &p,
        &unspecified(),
        &ids,
        &granted,
        false,
        MultipleIdentities::First,
    )
    .unwrap();
    assert_eq!(chosen.spec.client_id, "client-z");
    // Naming an identity still works, and an unbound one is still refused.
    assert_eq!(
        select_managed(
            &p,
            &by_client("client-a"),
            &index,
            MultipleIdentities::First
        )
        .unwrap()
        .spec
        .client_id,
        "client-a"
    );
    let e = select_managed(
        &p,
        &by_client("client-x"),
        &index,
        MultipleIdentities::First,
    )
    .unwrap_err();
    assert_eq!(e.reply(false).status, 403);
}

#[test]
fn managed_mode_uses_only_the_pods_namespace() {
    let p = pod("ns", "p", Some("sel"), "10.0.0.5");
    let ids = [msi("ns", "a", "client-a"), msi("other", "x", "client-x")];
    let bindings = [
        binding("ns", "ba", "a", "sel"),
        binding("other", "bx", "x", "sel"),
    ];
    let index = IdentityIndex::from_objects(&bindings, &ids, []);
    assert_eq!(
        select_managed(&p, &unspecified(), &index, MultipleIdentities::Refuse)
            .unwrap()
            .spec
            .client_id,
        "client-a"
    );
    let e = select_managed(
        &p,
        &by_client("client-x"),
        &index,
        MultipleIdentities::Refuse,
    )
    .unwrap_err();
    assert_eq!(e.reply(false).status, 403);
    let lonely = pod("ns", "l", None, "10.0.0.7");
    assert_eq!(
        select_managed(&lonely, &unspecified(), &index, MultipleIdentities::Refuse)
            .unwrap_err()
            .reply(false)
            .status,
        404
    );
}

#[test]
fn wait_timeouts_become_404_or_503_with_retry_after() {
    let e = ResolveError::Wait(WaitError::NotCreated {
        pod: "ns/p".into(),
        attempts: 16,
        interval_secs: 5,
    });
    assert_eq!(e.reply(false).status, 404);
    let r = e.reply(true);
    assert_eq!((r.status, r.retry_after), (503, Some(20)));
}

#[test]
fn exceptions_and_the_builtin_mic_exception() {
    let mut p = pod("ns", "p", None, "10.0.0.5");
    p.facts.labels.insert("app".into(), "Agent".into());
    let ex = [exception("ns", "e", "app", "agent")];
    assert!(is_exempt(&p, &ex, "default"));
    assert!(!is_exempt(
        &p,
        &[exception("other", "e", "app", "agent")],
        "default"
    ));
    let mut mic = pod("Default", "mic-1", None, "10.0.0.9");
    mic.replica_set = Some("mic-7d9f".into());
    assert!(is_exempt(&mic, &[], "default"));
    mic.replica_set = Some("aad-pod-identity-mic-7d9f".into());
    assert!(!is_exempt(&mic, &[], "default"));
}

// ---------- token cache ----------

struct FakeClock(AtomicU64);
impl Clock for FakeClock {
    fn now_unix(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

fn tok(expires_on: u64) -> AccessToken {
    AccessToken {
        access_token: "t".into(),
        expires_on,
        not_before: None,
        resource: "r".into(),
        token_type: "Bearer".into(),
    }
}

#[test]
fn cache_serves_until_shortly_before_expiry() {
    let clock = Arc::new(FakeClock(AtomicU64::new(1_000)));
    let cache = TokenCache::new(clock.clone(), Duration::from_secs(300));
    let key = CacheKey {
        identity: "msi:a".into(),
        resource: "r".into(),
    };
    cache.put(key.clone(), vec![tok(4_600)]);
    assert!(cache.get(&key).is_some());
    assert!(
        cache
            .get(&CacheKey {
                resource: "other".into(),
                ..key.clone()
            })
            .is_none()
    );
    clock.0.store(4_299, Ordering::SeqCst);
    assert!(cache.get(&key).is_some());
    clock.0.store(4_300, Ordering::SeqCst);
    assert!(cache.get(&key).is_none(), "within the refresh margin");
    assert!(cache.is_empty(), "stale entries are dropped");
    cache.put(key.clone(), vec![tok(4_500)]);
    assert!(
        cache.is_empty(),
        "a token already inside the margin is not stored"
    );
}

fn key(resource: &str) -> CacheKey {
    CacheKey {
        identity: "msi:a".into(),
        resource: resource.into(),
    }
}

#[test]
fn full_cache_drops_stale_entries_first_then_the_least_recently_used() {
    let clock = Arc::new(FakeClock(AtomicU64::new(1_000)));
    let cache = TokenCache::new(clock.clone(), Duration::from_secs(300)).with_bounds(3, 1 << 20);
    cache.put(key("short"), vec![tok(2_000)]);
    cache.put(key("a"), vec![tok(9_000)]);
    cache.put(key("b"), vec![tok(9_000)]);
    clock.0.store(1_800, Ordering::SeqCst); // "short" is now inside the refresh margin
    cache.put(key("c"), vec![tok(9_000)]);
    assert_eq!(cache.len(), 3);
    for k in ["a", "b", "c"] {
        assert!(
            cache.get(&key(k)).is_some(),
            "{k} kept: the stale entry went"
        );
    }
    // Used order now a, b, c; serving a makes b the least recently used.
    assert!(cache.get(&key("a")).is_some());
    cache.put(key("d"), vec![tok(9_000)]);
    assert_eq!(cache.len(), 3);
    assert!(
        cache.get(&key("b")).is_none(),
        "least recently used evicted"
    );
    for k in ["a", "c", "d"] {
        assert!(cache.get(&key(k)).is_some(), "{k} kept");
    }
    // Replacing an entry does not evict another.
    cache.put(key("d"), vec![tok(9_500)]);
    assert_eq!(cache.len(), 3);
    assert!(cache.get(&key("a")).is_some() && cache.get(&key("c")).is_some());
}

#[test]
fn cache_bytes_stay_within_the_bound_whatever_the_resources() {
    let clock = Arc::new(FakeClock(AtomicU64::new(1_000)));
    let max_bytes = 64 << 10;
    let cache =
        TokenCache::new(clock.clone(), Duration::from_secs(300)).with_bounds(10_000, max_bytes);
    for i in 0..2_000 {
        let resource = format!("https://{i}.example/{}", "x".repeat(i % 3_000));
        let mut t = tok(9_000);
        t.resource = resource.clone();
        cache.put(key(&resource), vec![t]);
        assert!(cache.bytes() <= max_bytes, "{} bytes", cache.bytes());
    }
    assert!(cache.len() < 2_000 && !cache.is_empty());
    // An entry larger than the whole cache is not stored (and evicts nothing).
    let before = cache.len();
    let huge = "y".repeat(max_bytes);
    cache.put(key(&huge), vec![tok(9_000)]);
    assert!(cache.get(&key(&huge)).is_none());
    assert_eq!(cache.len(), before);
}

#[test]
fn cache_keys_the_resource_exactly_as_sent_upstream() {
    // `…vault.azure.net` and `…vault.azure.net/` are different audiences to Entra.
    let clock = Arc::new(FakeClock(AtomicU64::new(1_000)));
    let cache = TokenCache::new(clock, Duration::from_secs(300));
    cache.put(key("https://vault.azure.net"), vec![tok(9_000)]);
    for other in [
        "https://vault.azure.net/",
        "https://vault.azure.net/.default",
        "https://VAULT.azure.net",
    ] {
        assert!(cache.get(&key(other)).is_none(), "{other}");
    }
    assert!(cache.get(&key("https://vault.azure.net")).is_some());
}

#[test]
fn msi_response_counts_down_and_redacts_debug() {
    let t = tok(5_000);
    let r = t.to_msi_response(1_400);
    assert_eq!(r.expires_in, "3600");
    assert_eq!(r.expires_on, "5000");
    assert_eq!(r.refresh_token, "");
    let json = serde_json::to_string(&r).unwrap();
    assert!(
        json.starts_with("{\"access_token\":\"t\",\"refresh_token\":\"\",\"expires_in\":\"3600\""),
        "{json}"
    );
    assert!(!format!("{t:?}").contains("\"t\""));
    let parsed = AccessToken::from_response(
        &serde_json::json!({"access_token":"x","expires_in":3599,"token_type":"Bearer"}),
        "res",
        100,
    )
    .unwrap();
    assert_eq!((parsed.expires_on, parsed.resource.as_str()), (3699, "res"));
}

#[test]
fn client_secret_from_secret_data() {
    let one = [("anything".to_owned(), b"s1".to_vec())].into();
    assert_eq!(client_secret_value(&one).as_deref(), Some("s1"));
    let two = [
        ("a".to_owned(), b"x".to_vec()),
        ("clientsecret".to_owned(), b"s2".to_vec()),
    ]
    .into();
    assert_eq!(client_secret_value(&two).as_deref(), Some("s2"));
}

// ---------- iptables ----------

fn spec() -> RuleSpec {
    RuleSpec {
        chain: "podid-metadata".into(),
        metadata_ip: "169.254.169.254".parse().unwrap(),
        metadata_port: 80,
        target_ip: "127.0.0.1".parse().unwrap(),
        target_port: 2579,
    }
}

#[test]
fn restore_payload_is_the_originals_rules_in_podids_chain() {
    assert_eq!(
        render_restore(&spec(), false),
        "*nat\n:podid-metadata - [0:0]\n-I PREROUTING 1 -j podid-metadata\n\
         -A podid-metadata ! -s 127.0.0.1/32 -d 169.254.169.254/32 -p tcp -m tcp --dport 80 -j DNAT --to-destination 127.0.0.1:2579\n\
         -A podid-metadata -j RETURN\nCOMMIT\n"
    );
    let original = RuleSpec {
        chain: "aad-metadata".into(),
        ..spec()
    };
    assert_eq!(
        render_restore(&original, false),
        "*nat\n:aad-metadata - [0:0]\n-I PREROUTING 1 -j aad-metadata\n\
         -A aad-metadata ! -s 127.0.0.1/32 -d 169.254.169.254/32 -p tcp -m tcp --dport 80 -j DNAT --to-destination 127.0.0.1:2579\n\
         -A aad-metadata -j RETURN\nCOMMIT\n",
        "--iptables-chain=aad-metadata writes exactly the original's rules"
    );
    assert!(
        !render_restore(&spec(), true).contains("PREROUTING"),
        "an existing jump is kept"
    );
    let any = RuleSpec {
        target_ip: "0.0.0.0".parse().unwrap(),
        ..spec()
    };
    assert!(render_restore(&any, true).contains("--to-destination 127.0.0.1:2579"));
    assert_eq!(
        render_cleanup("podid-metadata", 2),
        "*nat\n:podid-metadata - [0:0]\n-D PREROUTING -j podid-metadata\n-D PREROUTING -j podid-metadata\n-X podid-metadata\nCOMMIT\n"
    );
}

#[test]
fn listing_comparison() {
    let good = "-N podid-metadata\n-A podid-metadata ! -s 127.0.0.1/32 -d 169.254.169.254/32 -p tcp -m tcp --dport 80 -j DNAT --to-destination 127.0.0.1:2579\n-A podid-metadata -j RETURN\n";
    assert!(chain_is_current(&spec(), good));
    assert!(!chain_is_current(
        &spec(),
        "-N podid-metadata\n-A podid-metadata -j RETURN\n"
    ));
    assert!(!chain_is_current(
        &RuleSpec {
            chain: "aad-metadata".into(),
            ..spec()
        },
        good
    ));
    assert!(!chain_is_current(
        &RuleSpec {
            target_port: 1,
            ..spec()
        },
        good
    ));
    let prerouting = "-P PREROUTING ACCEPT\n-A PREROUTING -j podid-metadata\n-A PREROUTING -j aad-metadata\n-A PREROUTING -j KUBE\n";
    assert_eq!(count_jumps("podid-metadata", prerouting), 1);
    assert_eq!(count_jumps("aad-metadata", prerouting), 1);
    assert_eq!(count_jumps("podid-metadata-2", prerouting), 0);
}

#[test]
fn chain_names() {
    use podid_nmi::iptables::check_chain_name;
    for ok in [
        "podid-metadata",
        "aad-metadata",
        "podid_2.x",
        &"a".repeat(28),
    ] {
        assert_eq!(check_chain_name(ok), Ok(()), "{ok}");
    }
    for bad in [
        "",
        &"a".repeat(29),
        "-j",
        "two words",
        "a;b",
        "PREROUTING",
        "OUTPUT",
    ] {
        assert!(check_chain_name(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn kubenet_guard() {
    assert!(podid_nmi::iptables::is_kubenet(
        "KUBELET_FLAGS=--network-plugin=kubenet --foo"
    ));
    assert!(!podid_nmi::iptables::is_kubenet(
        "KUBELET_FLAGS=--network-plugin=cni"
    ));
}

#[test]
fn imds_urls_keep_the_base_path() {
    use podid_nmi::token::imds_url;
    let plain = url::Url::parse("http://169.254.169.254:80/").unwrap();
    assert_eq!(
        imds_url(&plain, "/metadata/instance?api-version=1")
            .unwrap()
            .as_str(),
        "http://169.254.169.254/metadata/instance?api-version=1"
    );
    let prefixed = url::Url::parse("http://127.0.0.1:9/instances/vmss_0").unwrap();
    assert_eq!(
        imds_url(&prefixed, "/metadata/identity/oauth2/token")
            .unwrap()
            .as_str(),
        "http://127.0.0.1:9/instances/vmss_0/metadata/identity/oauth2/token"
    );
    // A path the URL parser would rewrite is never sent.
    for rewritten in [
        "/metadata/x/../identity/oauth2/token",
        "/./metadata/instance",
        "/metadata\\identity/oauth2/token",
        "/%2e/metadata/instance",
    ] {
        assert_eq!(imds_url(&plain, rewritten), None, "{rewritten}");
    }
}

#[test]
fn pod_info_from_a_pod_object() {
    let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "mic-7d9f-abcde", "namespace": "default",
                     "labels": {"aadpodidbinding": "sel"},
                     "ownerReferences": [{"apiVersion": "apps/v1", "kind": "replicaset", "name": "mic-7d9f", "uid": "u"}]},
        "spec": {"nodeName": "node-1", "containers": []},
        "status": {"phase": "Running", "podIP": "10.244.0.7"}
    }))
    .unwrap();
    let info = podid_nmi::cluster::pod_info(&pod);
    assert_eq!(info.key(), "default/mic-7d9f-abcde");
    assert_eq!(info.replica_set.as_deref(), Some("mic-7d9f"));
    assert_eq!(info.ip, Some("10.244.0.7".parse().unwrap()));
    assert!(info.active && !info.host_network);
    assert_eq!(info.facts.binding_label(), Some("sel"));
    assert_eq!(info.facts.node_name, "node-1");

    let done: k8s_openapi::api::core::v1::Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "job", "namespace": "ns"},
        "spec": {"hostNetwork": true, "containers": []},
        "status": {"phase": "Succeeded", "podIP": "10.0.0.4"}
    }))
    .unwrap();
    let info = podid_nmi::cluster::pod_info(&done);
    assert!(!info.active && info.host_network);
}

#[test]
fn conntrack_deletion_targets_tcp_to_the_metadata_endpoint_and_reads_the_count() {
    assert_eq!(
        conntrack_delete_args("169.254.169.254".parse().unwrap(), 80).join(" "),
        "-D -p tcp --orig-dst 169.254.169.254 --orig-port-dst 80"
    );
    assert_eq!(
        parse_conntrack_deleted(
            "conntrack v1.4.7 (conntrack-tools): 3 flow entries have been deleted."
        ),
        Some(3)
    );
    assert_eq!(
        parse_conntrack_deleted(
            "conntrack v1.4.7 (conntrack-tools): 0 flow entries have been deleted."
        ),
        Some(0)
    );
    assert_eq!(
        parse_conntrack_deleted("conntrack v1.4.7 (conntrack-tools): Operation not permitted"),
        None,
        "anything else is a failure"
    );
}

// ---------- flags ----------

#[test]
fn listener_and_cache_limits_come_from_flags_and_zero_is_refused_by_name() {
    use clap::Parser;
    use podid_nmi::config::Flags;
    let flags = Flags::try_parse_from([
        "nmi",
        "--node=n",
        "--max-connections=10",
        "--max-connections-per-ip=2",
        "--read-timeout-sec=3",
    ])
    .unwrap();
    let limits = flags.listener_limits();
    assert_eq!(
        (
            limits.max_connections,
            limits.max_connections_per_ip,
            limits.header_read_timeout
        ),
        (10, 2, Duration::from_secs(3))
    );
    assert_eq!(
        flags.server_config().body_read_timeout,
        Duration::from_secs(3)
    );
    for flag in [
        "--max-connections",
        "--max-connections-per-ip",
        "--read-timeout-sec",
        "--token-cache-max-entries",
    ] {
        let flags = Flags::try_parse_from(["nmi", "--node=n", &format!("{flag}=0")]).unwrap();
        assert_eq!(
            flags.validate(),
            Err(format!("{flag} must be at least 1")),
            "{flag}"
        );
    }
}
