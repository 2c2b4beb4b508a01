//! The bridge's decisions without a cluster: from the plan of the move (the report's own) and
//! what ARM and the API server hold, which credentials, ServiceAccounts and deletions a pass makes.

use std::collections::{BTreeMap, BTreeSet};

use podid_azure::FederatedCredential;
use podid_crds::index::IdentityIndex;
use podid_crds::migration::{MAX_FEDERATED_CREDENTIALS, credential_name};
use podid_crds::plan::{ClusterContext, PlanInput, Workload, plan as plan_move};
use podid_crds::policy::MatchOptions;
use podid_crds::reason::ReasonCode;
use podid_crds::{AzureIdentity, IdentityType, POD_LABEL};
use podid_operator::bridge::{Observed, plan};
use podid_testkit::builders::{binding, msi, rid};
use pretty_assertions::assert_eq;

const ISSUER: &str = "https://oidc.example.com/tenant/cluster/";

fn workload(ns: &str, kind: &str, name: &str, sa: &str, label: &str) -> Workload {
    Workload {
        namespace: ns.into(),
        kind: kind.into(),
        name: name.into(),
        labels: BTreeMap::from([(POD_LABEL.to_owned(), label.to_owned())]),
        service_account: sa.into(),
        ..Default::default()
    }
}

fn assess(
    workloads: &[Workload],
    identities: &[AzureIdentity],
    bindings: &[podid_crds::AzureIdentityBinding],
) -> Vec<podid_crds::plan::Assessment> {
    let index = IdentityIndex::from_objects(bindings, identities, []);
    let context = ClusterContext {
        oidc_issuer: Some(ISSUER.into()),
        webhook_installed: true,
        match_options: MatchOptions::standard(false),
        ..Default::default()
    };
    plan_move(&PlanInput {
        workloads,
        index: &index,
        service_accounts: &[],
        context: &context,
    })
}

fn foreign(name: &str, subject: &str) -> FederatedCredential {
    FederatedCredential {
        name: name.into(),
        issuer: ISSUER.into(),
        subject: subject.into(),
        audience: "api://AzureADTokenExchange".into(),
    }
}

fn observed_with(identity: &str, credentials: Vec<FederatedCredential>) -> Observed {
    Observed {
        credentials: BTreeMap::from([(identity.to_ascii_lowercase(), credentials)]),
        ..Default::default()
    }
}

#[test]
fn twenty_five_service_accounts_on_an_identity_with_two_foreign_credentials() {
    let workloads: Vec<Workload> = (0..25)
        .map(|i| {
            workload(
                "apps",
                "Deployment",
                &format!("w{i:02}"),
                &format!("sa{i:02}"),
                "shared",
            )
        })
        .collect();
    let a = assess(
        &workloads,
        &[msi("apps", "shared", "client-shared")],
        &[binding("apps", "b", "shared", "shared")],
    );
    let existing = vec![
        foreign("by-hand-1", "system:serviceaccount:other:one"),
        foreign("by-hand-2", "system:serviceaccount:other:two"),
    ];
    let p = plan(&a, ISSUER, &observed_with(&rid("shared"), existing));
    assert_eq!(p.put.len(), MAX_FEDERATED_CREDENTIALS - 2, "18 created");
    let left = &p.left_out[&rid("shared").to_ascii_lowercase()];
    assert_eq!(left.len(), 7);
    assert_eq!(
        left.iter().map(|(_, sa)| sa.as_str()).collect::<Vec<_>>(),
        ["sa18", "sa19", "sa20", "sa21", "sa22", "sa23", "sa24"]
    );
    assert!(p.delete.is_empty(), "foreign credentials are never deleted");
    // The workloads left out say why, with the report's code.
    let blocked: Vec<_> = p
        .workloads
        .iter()
        .filter(|w| {
            w.conflicts
                .iter()
                .any(|c| c.code == ReasonCode::FederatedCredentialLimit)
        })
        .map(|w| w.name.as_str())
        .collect();
    assert_eq!(blocked, ["w18", "w19", "w20", "w21", "w22", "w23", "w24"]);
}

#[test]
fn a_need_met_by_a_hand_made_credential_writes_nothing() {
    let ids = [msi("shop", "cart", "client-cart")];
    let a = assess(
        &[workload("shop", "Deployment", "cart", "cart-sa", "cart")],
        &ids,
        &[binding("shop", "b", "cart", "cart")],
    );
    let hand = foreign("mine", "system:serviceaccount:shop:cart-sa");
    let mut o = observed_with(&rid("cart"), vec![hand]);
    o.service_accounts.insert(
        ("shop".into(), "cart-sa".into()),
        Some("client-cart".into()),
    );
    let p = plan(&a, ISSUER, &o);
    assert!(p.put.is_empty(), "{:?}", p.put);
    assert!(p.delete.is_empty());
    assert!(p.service_accounts.is_empty());
    assert!(p.workloads[0].credentials[0].within_budget);
}

#[test]
fn podid_credentials_go_only_when_unneeded_and_unused() {
    let ids = [msi("shop", "cart", "client-cart")];
    let a = assess(&[], &ids, &[]);
    let ours_unused = foreign(
        &credential_name(ISSUER, "shop", "old"),
        "system:serviceaccount:shop:old",
    );
    let ours_in_use = foreign(
        &credential_name(ISSUER, "shop", "moved"),
        "system:serviceaccount:shop:moved",
    );
    let theirs = foreign("by-hand", "system:serviceaccount:shop:gone");
    let mut o = observed_with(&rid("cart"), vec![ours_unused.clone(), ours_in_use, theirs]);
    o.workload_id_in_use.insert(("shop".into(), "moved".into()));
    let p = plan(&a, ISSUER, &o);
    assert_eq!(
        p.delete,
        [(rid("cart").to_ascii_lowercase(), ours_unused.name)],
        "only podid's credential that no workload needs and no pod runs on"
    );
}

#[test]
fn service_accounts_are_created_or_annotated_never_overwritten() {
    let ids = [
        msi("shop", "cart", "client-cart"),
        msi("shop", "pay", "client-pay"),
    ];
    let bindings = [
        binding("shop", "b1", "cart", "cart"),
        binding("shop", "b2", "pay", "pay"),
        binding("shop", "b3", "cart", "both"),
        binding("shop", "b4", "pay", "both"),
    ];
    let workloads = [
        // On `default`: a dedicated ServiceAccount named after it.
        workload("shop", "Deployment", "cart", "default", "cart"),
        // Its ServiceAccount names another client ID already: surfaced, left alone.
        workload("shop", "CronJob", "pay", "payer", "pay"),
        // Two identities: credentials for both, no annotation.
        workload("shop", "StatefulSet", "both", "both-sa", "both"),
    ];
    let a = assess(&workloads, &ids, &bindings);
    let mut o = Observed::default();
    for id in ["cart", "pay"] {
        o.credentials
            .insert(rid(id).to_ascii_lowercase(), Vec::new());
    }
    o.service_accounts
        .insert(("shop".into(), "payer".into()), Some("someone-else".into()));
    o.service_accounts
        .insert(("shop".into(), "both-sa".into()), None);
    let p = plan(&a, ISSUER, &o);

    let writes: BTreeSet<_> = p
        .service_accounts
        .iter()
        .map(|w| (w.name.as_str(), w.create, w.client_id.as_deref()))
        .collect();
    assert_eq!(
        writes,
        BTreeSet::from([("cart", true, Some("client-cart"))]),
        "only the missing dedicated one"
    );
    let by_name = |n: &str| p.workloads.iter().find(|w| w.name == n).unwrap();
    assert!(
        by_name("pay")
            .conflicts
            .iter()
            .any(|c| c.code == ReasonCode::ServiceAccountAnnotation
                && c.message.contains("someone-else"))
    );
    assert_eq!(by_name("both").credentials.len(), 2);
    assert!(
        by_name("both")
            .conflicts
            .iter()
            .any(|c| c.code == ReasonCode::MultipleIdentities)
    );
    // One credential per (identity, namespace, ServiceAccount): cart/default → shop:cart.
    let subjects: BTreeSet<_> = p.put.iter().map(|(_, c)| c.subject.as_str()).collect();
    assert_eq!(
        subjects,
        BTreeSet::from([
            "system:serviceaccount:shop:cart",
            "system:serviceaccount:shop:payer",
            "system:serviceaccount:shop:both-sa",
        ])
    );
    assert_eq!(p.put.len(), 4, "both-sa gets one on each identity");
}

#[test]
fn service_principals_get_no_credential_and_say_why() {
    let mut sp = msi("shop", "legacy", "client-sp");
    sp.spec.type_ = IdentityType::ServicePrincipal;
    let a = assess(
        &[workload("shop", "Deployment", "legacy", "legacy", "legacy")],
        &[sp],
        &[binding("shop", "b", "legacy", "legacy")],
    );
    let p = plan(&a, ISSUER, &Observed::default());
    assert!(p.put.is_empty());
    assert!(p.workloads[0].credentials.is_empty());
    assert!(
        p.workloads[0]
            .conflicts
            .iter()
            .any(|c| c.code == ReasonCode::ServicePrincipalIdentity)
    );
}

#[test]
fn a_service_account_shared_across_identities_becomes_one_per_workload() {
    let ids = [
        msi("shop", "cart", "client-cart"),
        msi("shop", "pay", "client-pay"),
    ];
    let bindings = [
        binding("shop", "b1", "cart", "cart"),
        binding("shop", "b2", "pay", "pay"),
    ];
    let workloads = [
        workload("shop", "Deployment", "cart", "common", "cart"),
        workload("shop", "Deployment", "pay", "common", "pay"),
    ];
    let a = assess(&workloads, &ids, &bindings);
    let mut o = Observed::default();
    for id in ["cart", "pay"] {
        o.credentials
            .insert(rid(id).to_ascii_lowercase(), Vec::new());
    }
    o.service_accounts
        .insert(("shop".into(), "common".into()), None);
    let p = plan(&a, ISSUER, &o);
    let created: BTreeSet<_> = p
        .service_accounts
        .iter()
        .map(|w| (w.name.as_str(), w.create, w.client_id.as_deref()))
        .collect();
    assert_eq!(
        created,
        BTreeSet::from([
            ("cart", true, Some("client-cart")),
            ("pay", true, Some("client-pay")),
        ]),
        "the shared ServiceAccount is left as it is"
    );
    let subjects: BTreeSet<_> = p.put.iter().map(|(_, c)| c.subject.as_str()).collect();
    assert_eq!(
        subjects,
        BTreeSet::from([
            "system:serviceaccount:shop:cart",
            "system:serviceaccount:shop:pay"
        ])
    );
}

#[test]
fn with_several_identities_the_named_default_is_annotated() {
    let ids = [
        msi("shop", "cart", "client-cart"),
        msi("shop", "pay", "client-pay"),
    ];
    let bindings = [
        binding("shop", "b1", "cart", "both"),
        binding("shop", "b2", "pay", "both"),
    ];
    let mut named = workload("shop", "Deployment", "named", "named-sa", "both");
    named.default_identity = Some("pay".into());
    let unnamed = workload("shop", "Deployment", "unnamed", "unnamed-sa", "both");
    let a = assess(&[named, unnamed], &ids, &bindings);
    let mut o = Observed::default();
    for id in ["cart", "pay"] {
        o.credentials
            .insert(rid(id).to_ascii_lowercase(), Vec::new());
    }
    let p = plan(&a, ISSUER, &o);
    let writes: BTreeSet<_> = p
        .service_accounts
        .iter()
        .map(|w| (w.name.as_str(), w.client_id.as_deref()))
        .collect();
    assert_eq!(
        writes,
        BTreeSet::from([("named-sa", Some("client-pay")), ("unnamed-sa", None)])
    );
    let unnamed = p.workloads.iter().find(|w| w.name == "unnamed").unwrap();
    assert!(
        unnamed
            .conflicts
            .iter()
            .any(|c| c.code == ReasonCode::MultipleIdentities
                && c.message.contains("podid.dev/default-identity"))
    );
    assert_eq!(
        p.put.len(),
        4,
        "credentials for both identities, for both ServiceAccounts"
    );
}

/// `n` workloads, one per namespace `team-<i>`, each bound (binding in `ids`) to identity
/// `ids/shared`.
fn spread(n: usize) -> Vec<podid_crds::plan::Assessment> {
    let workloads: Vec<Workload> = (0..n)
        .map(|i| {
            workload(
                &format!("team-{i:02}"),
                "Deployment",
                "app",
                "app",
                &format!("sel-{i:02}"),
            )
        })
        .collect();
    let bindings: Vec<_> = (0..n)
        .map(|i| {
            binding(
                "ids",
                &format!("b-{i:02}"),
                "shared",
                &format!("sel-{i:02}"),
            )
        })
        .collect();
    assess(
        &workloads,
        &[msi("ids", "shared", "client-shared")],
        &bindings,
    )
}

fn sharing(exchanged: bool) -> podid_operator::bridge::Sharing {
    podid_operator::bridge::Sharing {
        namespace: Some("podid-system".into()),
        exchanged: if exchanged {
            BTreeSet::from([rid("shared").to_ascii_lowercase()])
        } else {
            BTreeSet::new()
        },
    }
}

#[test]
fn an_identity_over_the_limit_served_by_exchange_gets_one_credential_for_its_service_account() {
    use podid_crds::migration::{identity_service_account, service_account_subject};
    use podid_operator::bridge::plan_with;
    let a = spread(25);
    let id = rid("shared").to_ascii_lowercase();
    let sa = identity_service_account(&id);
    let subject = service_account_subject("podid-system", &sa);
    let p = plan_with(&a, ISSUER, &observed_with(&id, vec![]), &sharing(true));
    assert_eq!(p.put.len(), 1, "{:?}", p.put);
    assert_eq!(p.put[0].1.subject, subject);
    assert_eq!(
        p.put[0].1.name,
        credential_name(ISSUER, "podid-system", &sa)
    );
    assert!(p.left_out.is_empty());
    assert_eq!(p.shared[&id], ("podid-system".to_owned(), sa.clone()));
    let made = p
        .service_accounts
        .iter()
        .find(|w| w.namespace == "podid-system")
        .expect("the per-identity ServiceAccount is created");
    assert_eq!(
        (made.name.as_str(), made.create, made.client_id.as_deref()),
        (sa.as_str(), true, Some("client-shared"))
    );
    // Every workload's record lists that one credential; the limit still blocks the cutover.
    assert_eq!(p.workloads.len(), 25);
    for w in &p.workloads {
        assert_eq!(w.credentials.len(), 1, "{}", w.namespace);
        assert_eq!(w.credentials[0].credential.subject, subject);
        assert!(w.credentials[0].within_budget);
        assert!(
            w.blockers
                .iter()
                .any(|b| b.code == ReasonCode::FederatedCredentialLimit),
            "{:?}",
            w.blockers
        );
    }

    // podid's per-workload credentials from before are no longer needed; a foreign one stays.
    let old = FederatedCredential {
        name: credential_name(ISSUER, "team-00", "app"),
        ..foreign("x", "system:serviceaccount:team-00:app")
    };
    let hand = foreign("by-hand", "system:serviceaccount:team-01:app");
    let p = plan_with(
        &a,
        ISSUER,
        &observed_with(&id, vec![old.clone(), hand]),
        &sharing(true),
    );
    assert_eq!(p.delete, [(id.clone(), old.name.clone())]);
    assert_eq!(p.put.len(), 1);

    // Assigned only (no exchange): the ordinary path, 20 credentials and 5 left out; the
    // per-identity ServiceAccount and credential made earlier go.
    let mut o = observed_with(
        &id,
        vec![FederatedCredential {
            name: credential_name(ISSUER, "podid-system", &sa),
            ..foreign("x", &subject)
        }],
    );
    o.managed_service_accounts
        .insert(("podid-system".into(), sa.clone()));
    o.managed_service_accounts
        .insert(("podid-system".into(), "podid-other".into()));
    o.service_accounts.insert(
        ("podid-system".into(), sa.clone()),
        Some("client-shared".into()),
    );
    let p = plan_with(&a, ISSUER, &o, &sharing(false));
    assert_eq!(p.put.len(), MAX_FEDERATED_CREDENTIALS);
    assert_eq!(p.left_out[&id].len(), 5);
    assert!(p.shared.is_empty());
    assert_eq!(
        p.delete,
        [(id.clone(), credential_name(ISSUER, "podid-system", &sa))]
    );
    assert_eq!(
        p.delete_service_accounts,
        [("podid-system".to_owned(), sa.clone())],
        "only the per-identity one podid made"
    );
}

#[test]
fn an_identity_within_the_limit_keeps_one_credential_per_service_account() {
    use podid_operator::bridge::plan_with;
    let a = spread(20);
    let id = rid("shared").to_ascii_lowercase();
    let p = plan_with(&a, ISSUER, &observed_with(&id, vec![]), &sharing(true));
    assert_eq!(p.put.len(), 20);
    assert!(p.shared.is_empty() && p.left_out.is_empty());
    // Without the operator's namespace the path is off.
    let a = spread(21);
    let off = podid_operator::bridge::Sharing {
        namespace: None,
        ..sharing(true)
    };
    let p = plan_with(&a, ISSUER, &observed_with(&id, vec![]), &off);
    assert!(p.shared.is_empty());
    assert_eq!(p.left_out[&id].len(), 1);
}

/// `prepare --direct`'s pass: only the scope's workloads, their credentials and ServiceAccounts,
/// and no deletion even of a podid credential no one needs.
#[test]
fn a_scoped_plan_writes_only_for_its_workloads_and_deletes_nothing() {
    let ids = [msi("shop", "cart", "client-cart")];
    let bindings = [binding("shop", "cart-b", "cart", "cart")];
    let a = assess(
        &[
            workload("shop", "Deployment", "web", "web", "cart"),
            workload("shop", "Deployment", "api", "api", "cart"),
        ],
        &ids,
        &bindings,
    );
    let stale = foreign(
        &credential_name(ISSUER, "shop", "old"),
        "system:serviceaccount:shop:old",
    );
    let o = observed_with(&rid("cart"), vec![stale.clone()]);
    let full = plan(&a, ISSUER, &o);
    assert_eq!(full.put.len(), 2);
    assert_eq!(
        full.delete.len(),
        1,
        "the whole-cluster pass removes the stale one"
    );
    let scope = BTreeSet::from([("shop".to_owned(), "Deployment".to_owned(), "web".to_owned())]);
    let p = full.restrict(&scope);
    let names: Vec<(&str, &str)> = p
        .workloads
        .iter()
        .map(|w| (w.kind.as_str(), w.name.as_str()))
        .collect();
    assert_eq!(names, [("Deployment", "web")]);
    assert_eq!(
        p.put
            .iter()
            .map(|(_, c)| c.subject.as_str())
            .collect::<Vec<_>>(),
        ["system:serviceaccount:shop:web"]
    );
    assert!(
        p.service_accounts.iter().all(|s| s.name == "web"),
        "{:?}",
        p.service_accounts
    );
    assert!(p.delete.is_empty() && p.delete_service_accounts.is_empty());
}

#[test]
fn writes_are_grouped_per_identity_creations_before_deletions() {
    let (a, b) = (rid("a"), rid("b"));
    let plan = podid_operator::bridge::BridgePlan {
        put: vec![
            (a.clone(), foreign("one", "system:serviceaccount:ns:one")),
            (b.clone(), foreign("two", "system:serviceaccount:ns:two")),
            (
                a.clone(),
                foreign("three", "system:serviceaccount:ns:three"),
            ),
        ],
        delete: vec![(a.clone(), "old".into())],
        ..Default::default()
    };
    let groups = plan.writes_by_identity();
    assert_eq!(groups.len(), 2, "one group per identity: {groups:?}");
    let names = |id: &str| {
        let g = &groups[id];
        (
            g.put.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
            g.delete.clone(),
        )
    };
    assert_eq!(names(&a), (vec!["one", "three"], vec!["old"]));
    assert_eq!(names(&b), (vec!["two"], vec![]));
}
