//! The bridge's Azure side against the emulator: federated credentials written through
//! `SerialCredentials` (one write at a time per identity, 409 and 429 retried), the
//! issuer+subject check matching what Azure refuses, and the workload identity exchange of real
//! ServiceAccount tokens from a real kube-apiserver (`WorkloadIdentitySource`).

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::setup;
use podid_azure::token::{
    AssertionSource, Clock, SystemClock, TokenError, TokenSource, WorkloadIdentitySource,
};
use podid_azure::{
    Arm, Error, FederatedCredential, FederatedCredentials, SerialCredentials,
    conflicting_credential,
};
use podid_azure_emulator::{Emulator, Fault};
use podid_crds::migration::TOKEN_EXCHANGE_AUDIENCE;
use podid_testkit::Cluster;

fn fic(name: &str, issuer: &str, subject: &str) -> FederatedCredential {
    FederatedCredential {
        name: name.into(),
        issuer: issuer.into(),
        subject: subject.into(),
        audience: TOKEN_EXCHANGE_AUDIENCE.into(),
    }
}

fn creds(prefix: &str, n: usize) -> Vec<FederatedCredential> {
    (0..n)
        .map(|i| {
            fic(
                &format!("{prefix}-{i}"),
                "https://oidc.example/cluster",
                &format!("system:serviceaccount:ns:{prefix}-{i}"),
            )
        })
        .collect()
}

/// Every ARM call the `Arm` makes, as `<operation> <result>`.
fn observe(arm: &mut Arm) -> Arc<Mutex<Vec<String>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    arm.observer = Some(Arc::new(move |op, result, _| {
        log.lock().unwrap().push(format!("{op} {result}"))
    }));
    seen
}

fn count(seen: &Mutex<Vec<String>>, what: &str) -> usize {
    seen.lock().unwrap().iter().filter(|s| *s == what).count()
}

fn is_concurrent_write(e: &Error) -> bool {
    matches!(e, Error::Arm { status: 409, code, .. }
        if code == "ConcurrentFederatedIdentityCredentialsWritesForSingleManagedIdentity")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_to_one_identity_succeed_only_through_serial_credentials() {
    let (emu, mut arm) = setup().await;
    let seen = observe(&mut arm);
    // Each write holds its identity a while, as Azure's do.
    emu.set_fic_write_latency(Duration::from_millis(250));
    const N: usize = 5;

    // Raw ARM calls overlap on the identity: Azure refuses some with 409.
    let raw_id = emu.add_identity("rg", "raw-id").id;
    arm.list(&raw_id).await.unwrap(); // signed in: the writes go out at once
    let raw = creds("raw", N);
    let results = futures::future::join_all(raw.iter().map(|c| arm.put(&raw_id, c))).await;
    let refused = results
        .iter()
        .filter(|r| r.as_ref().is_err_and(is_concurrent_write))
        .count();
    assert!(refused >= 1, "{results:?}");
    assert!(results.iter().all(|r| match r {
        Ok(()) => true,
        Err(e) => is_concurrent_write(e),
    }));
    assert_eq!(arm.list(&raw_id).await.unwrap().len(), N - refused);

    // Through SerialCredentials, from N tasks per identity at once: all succeed, without one
    // 409.
    seen.lock().unwrap().clear();
    let serial = Arc::new(SerialCredentials::new(arm.clone()));
    let ids = [
        emu.add_identity("rg", "serial-a").id,
        emu.add_identity("rg", "serial-b").id,
    ];
    let tasks: Vec<_> = ids
        .iter()
        .flat_map(|id| creds("serial", N).into_iter().map(move |c| (id.clone(), c)))
        .map(|(id, c)| {
            let serial = serial.clone();
            tokio::spawn(async move { serial.put(&id, &c).await })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    for id in &ids {
        let mut names: Vec<String> = serial
            .list(id)
            .await
            .unwrap()
            .into_iter()
            .map(|c| c.name)
            .collect();
        names.sort();
        let expected: Vec<String> = creds("serial", N).into_iter().map(|c| c.name).collect();
        assert_eq!(names, expected);
    }
    assert_eq!(count(&seen, "fic_put rejected"), 0, "{:?}", seen.lock());
    assert_eq!(count(&seen, "fic_put ok"), 2 * N);

    // Deletes take turns too.
    seen.lock().unwrap().clear();
    let deletes = creds("serial", N)
        .into_iter()
        .map(|c| {
            let serial = serial.clone();
            let id = ids[0].clone();
            tokio::spawn(async move { serial.delete(&id, &c.name).await })
        })
        .collect::<Vec<_>>();
    for t in deletes {
        t.await.unwrap().unwrap();
    }
    assert!(serial.list(&ids[0]).await.unwrap().is_empty());
    assert_eq!(count(&seen, "fic_delete rejected"), 0);
}

#[tokio::test]
async fn a_write_refused_by_another_writer_is_retried() {
    let (emu, mut arm) = setup().await;
    let seen = observe(&mut arm);
    emu.set_fic_write_latency(Duration::from_millis(500));
    let id = emu.add_identity("rg", "shared-id").id;
    let mut serial = SerialCredentials::new(arm.clone());
    serial.conflict_retry.base_delay = Duration::from_millis(100);
    // Someone else (another process: not through `serial`) is writing the identity.
    let other = fic(
        "other",
        "https://oidc.example/x",
        "system:serviceaccount:x:other",
    );
    let ours = fic(
        "ours",
        "https://oidc.example/x",
        "system:serviceaccount:x:ours",
    );
    arm.list(&id).await.unwrap(); // signed in: the next call goes out at once
    let (theirs, mine) = tokio::join!(arm.put(&id, &other), async {
        // Once their write holds the identity.
        while emu.call_count("PUT fic") == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        serial.put(&id, &ours).await
    });
    theirs.unwrap();
    mine.unwrap();
    assert!(count(&seen, "fic_put rejected") >= 1, "{:?}", seen.lock());
    assert_eq!(count(&seen, "fic_put ok"), 2);
    assert_eq!(arm.list(&id).await.unwrap().len(), 2);
}

#[tokio::test]
async fn throttled_writes_are_retried_honouring_retry_after() {
    let (emu, mut arm) = setup().await;
    arm.retry.base_delay = Duration::from_millis(10);
    let seen = observe(&mut arm);
    let serial = SerialCredentials::new(arm);
    let id = emu.add_identity("rg", "throttled-id").id;
    let c = fic(
        "throttled",
        "https://oidc.example/x",
        "system:serviceaccount:x:throttled",
    );

    emu.inject(Fault::throttle("PUT fic", 1, 1));
    let started = Instant::now();
    serial.put(&id, &c).await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "waited for Retry-After"
    );
    emu.inject(Fault::throttle("DELETE fic", 1, 1));
    serial.delete(&id, &c.name).await.unwrap();
    assert_eq!(
        *seen.lock().unwrap(),
        [
            "fic_put throttled",
            "fic_put ok",
            "fic_delete throttled",
            "fic_delete ok"
        ]
    );
    assert!(serial.list(&id).await.unwrap().is_empty());
}

#[tokio::test]
async fn the_issuer_subject_check_finds_what_azure_refuses() {
    let (emu, arm) = setup().await;
    let serial = SerialCredentials::new(arm);
    let id = emu.add_identity("rg", "unique-id").id;
    let iss = "https://oidc.example/cluster";
    let sub = "system:serviceaccount:payments:checkout";
    serial.put(&id, &fic("first", iss, sub)).await.unwrap();
    let existing = serial.list(&id).await.unwrap();

    let dup = fic("second", iss, sub);
    assert_eq!(
        conflicting_credential(&existing, &dup).map(|c| c.name.as_str()),
        Some("first")
    );
    let err = serial.put(&id, &dup).await.unwrap_err();
    assert!(
        matches!(&err, Error::Arm { status: 400, message, .. } if message.contains("Issuer and subject combination already exists")),
        "{err}"
    );

    // A trailing slash makes another issuer, for the check and for Azure alike.
    let slash = fic("third", &format!("{iss}/"), sub);
    assert_eq!(conflicting_credential(&existing, &slash), None);
    serial.put(&id, &slash).await.unwrap();
    // Rewriting a credential under its own name is no conflict.
    let again = fic("first", iss, sub);
    assert_eq!(conflicting_credential(&existing, &again), None);
    serial.put(&id, &again).await.unwrap();
}

/// A ServiceAccount token for [`TOKEN_EXCHANGE_AUDIENCE`] through TokenRequest, as the bridge
/// gets one (the ServiceAccount is created if missing).
fn token_request(client: kube::Client, ns: &str, sa: &str) -> Arc<dyn AssertionSource> {
    let (ns, sa) = (ns.to_string(), sa.to_string());
    Arc::new(move || {
        let (client, ns, sa) = (client.clone(), ns.clone(), sa.clone());
        async move {
            podid_testkit::projected_token(&client, &ns, &sa, TOKEN_EXCHANGE_AUDIENCE)
                .await
                .map_err(|e| TokenError::Unavailable(format!("TokenRequest: {e}")))
        }
    })
}

fn exchange(
    emu: &Emulator,
    client_id: &str,
    assertion: Arc<dyn AssertionSource>,
) -> WorkloadIdentitySource {
    WorkloadIdentitySource {
        http: reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(emu.ca_pem().as_bytes()).unwrap())
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap(),
        authority: url::Url::parse(&emu.authority_host()).unwrap(),
        tenant_id: emu.tenant_id(),
        client_id: client_id.into(),
        assertion,
        clock: Arc::new(SystemClock),
    }
}

#[tokio::test]
async fn service_account_tokens_are_exchanged_for_the_identity_they_are_federated_with() {
    let cluster = Cluster::shared_async().await;
    let ns = cluster.namespace("wi").await;
    let (emu, arm) = setup().await;
    emu.trust_issuer_ca(cluster.ca_pem());
    let identity = emu.add_identity("rg-ids", "checkout-id");
    let subject = format!("system:serviceaccount:{}:checkout", ns.name);
    // The bridge's way: the credential is written through ARM, then proven.
    SerialCredentials::new(arm)
        .put(&identity.id, &fic("checkout", cluster.issuer(), &subject))
        .await
        .unwrap();

    let source = exchange(
        &emu,
        &identity.client_id,
        token_request(ns.client.clone(), &ns.name, "checkout"),
    );
    assert_eq!(source.operation(), "workload_identity_token");
    let t = source.fetch("https://vault.azure.net").await.unwrap();
    assert_eq!(t.resource, "https://vault.azure.net");
    assert_eq!(t.token_type, "Bearer");
    let c = podid_testkit::sdk::claims(&t.access_token);
    assert_eq!(c["azp"], identity.client_id);
    assert_eq!(c["oid"], identity.principal_id);
    assert_eq!(c["xms_mirid"], identity.id);
    assert_eq!(c["aud"], "https://vault.azure.net");
    assert_eq!(c["ver"], "2.0");
    assert!(t.expires_on > SystemClock.now_unix() + 3000);
    // A v1 resource with a trailing slash keeps it in the token's audience.
    let t = source.fetch("https://database.windows.net/").await.unwrap();
    assert_eq!(t.resource, "https://database.windows.net/");
    assert_eq!(
        podid_testkit::sdk::claims(&t.access_token)["aud"],
        "https://database.windows.net/"
    );

    // A ServiceAccount no credential names: AADSTS70021, machine-readable.
    let intruder = token_request(ns.client.clone(), &ns.name, "intruder");
    let presented = intruder.assertion().await.unwrap();
    let err = exchange(&emu, &identity.client_id, intruder)
        .fetch("https://vault.azure.net")
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            TokenError::Exchange {
                status: 400,
                aadsts: Some(70021),
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(err.aadsts(), Some(70021));
    assert!(err.is_no_matching_federated_record());
    assert_eq!(err.status(), 403);
    let shown = format!("{err} {err:?}");
    assert!(shown.contains("AADSTS70021"), "{shown}");
    assert!(
        shown.contains(&format!("system:serviceaccount:{}:intruder", ns.name)),
        "{shown}"
    );
    // Neither the assertion (nor any part of its signature) is in the error.
    let signature = presented.rsplit('.').next().unwrap();
    assert!(
        !shown.contains(&presented) && !shown.contains(signature),
        "{shown}"
    );

    // Another identity's client ID: a different failure, told apart by its code.
    let err = exchange(
        &emu,
        "00000000-dead-beef-0000-000000000000",
        token_request(ns.client.clone(), &ns.name, "checkout"),
    )
    .fetch("https://vault.azure.net")
    .await
    .unwrap_err();
    assert_eq!(err.aadsts(), Some(700016), "{err}");
    assert!(!err.is_no_matching_federated_record());

    // Entra throttling: 503 to the caller, not a refusal.
    emu.inject(Fault::throttle("POST token", 5, 1));
    let err = source.fetch("https://vault.azure.net").await.unwrap_err();
    assert!(
        matches!(err, TokenError::Exchange { status: 429, .. }),
        "{err}"
    );
    assert_eq!(err.status(), 503);
}
