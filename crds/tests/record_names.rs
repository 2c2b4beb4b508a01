//! Names of AzureAssignedIdentities: the original's `<pod>-<podns>-<identity>` where it is
//! unambiguous, a fallback name otherwise, never another owner's record, independent of order.

use std::collections::BTreeSet;

use podid_crds::policy::{
    ExistingRecord, MAX_OBJECT_NAME_LEN, RecordOwner, WantedRecord, assigned_identity_names,
    is_dns_subdomain,
};
use podid_testkit::builders::permutations;
use pretty_assertions::assert_eq;

fn want(pod_ns: &str, pod: &str, identity: &str) -> WantedRecord {
    WantedRecord {
        namespace: "default".into(),
        owner: RecordOwner::new(pod_ns, pod, identity),
    }
}

fn record(name: &str, pod_ns: &str, pod: &str, identity: &str) -> ExistingRecord {
    ExistingRecord {
        namespace: "default".into(),
        name: name.into(),
        owner: RecordOwner::new(pod_ns, pod, identity),
    }
}

fn names(wanted: &[WantedRecord], existing: &[ExistingRecord]) -> Vec<String> {
    assigned_identity_names(wanted, existing)
        .into_iter()
        .map(|n| n.expect("every record is named"))
        .collect()
}

/// Four owners whose original names are all `api-team-a-prod-kv`.
fn colliding() -> Vec<WantedRecord> {
    vec![
        want("team-a-prod", "api", "kv"),
        want("team-a", "api", "prod-kv"),
        want("a-prod", "api-team", "kv"),
        want("team", "api", "a-prod-kv"),
    ]
}

#[test]
fn the_original_name_is_kept_without_collision() {
    let wanted = [want("apps", "web-1", "id1"), want("apps", "web-2", "id1")];
    assert_eq!(
        names(&wanted, &[]),
        ["web-1-apps-id1", "web-2-apps-id1"],
        "the original MIC's names"
    );
    // Its own record of that name (made by the original MIC or podid) stays as it is.
    let existing = [record("web-1-apps-id1", "apps", "web-1", "id1")];
    assert_eq!(names(&wanted, &existing)[0], "web-1-apps-id1");
}

#[test]
fn colliding_owners_get_distinct_names_whatever_the_order() {
    let wanted = colliding();
    let first = names(&wanted, &[]);
    let unique: BTreeSet<_> = first.iter().collect();
    assert_eq!(unique.len(), 4, "distinct names: {first:?}");
    for n in &first {
        assert!(is_dns_subdomain(n), "{n} is a valid object name");
        assert!(
            n.starts_with("api-team-a-prod-kv-"),
            "{n} stays readable: the original name, then the hash"
        );
    }
    for p in permutations(&wanted) {
        let got = names(&p, &[]);
        for (w, n) in p.iter().zip(&got) {
            let i = wanted.iter().position(|x| x == w).unwrap();
            assert_eq!(
                n, &first[i],
                "the name of {:?} depends on the order",
                w.owner
            );
        }
    }
}

#[test]
fn an_existing_record_keeps_its_name_and_is_never_given_to_another_owner() {
    // The original MIC (or podid before the others came) made the first owner's record.
    let wanted = colliding();
    let existing = [record("api-team-a-prod-kv", "team-a-prod", "api", "kv")];
    for p in permutations(&wanted) {
        let got = names(&p, &existing);
        for (w, n) in p.iter().zip(&got) {
            if w.owner == wanted[0].owner {
                assert_eq!(n, "api-team-a-prod-kv", "the holder keeps it");
            } else {
                assert_ne!(n, "api-team-a-prod-kv", "{:?} must not take it", w.owner);
            }
        }
        assert_eq!(got.iter().collect::<BTreeSet<_>>().len(), 4);
    }
}

#[test]
fn a_record_of_a_gone_pod_is_not_reused_for_another_pod() {
    // Its pod is gone; the record is deleted this pass. The newcomer whose original name it
    // is takes a fallback name rather than rewriting a record that named another pod.
    let existing = [record("api-team-a-prod-kv", "team-a-prod", "api", "kv")];
    let wanted = [want("team-a", "api", "prod-kv")];
    let got = names(&wanted, &existing);
    assert_ne!(got[0], "api-team-a-prod-kv");
    // Once made, the fallback record keeps its name after the old one is gone.
    let now = [record(&got[0], "team-a", "api", "prod-kv")];
    assert_eq!(names(&wanted, &now), got);
}

#[test]
fn names_are_unique_across_namespaces() {
    // The original MIC keys records by name alone, over all namespaces.
    let mut a = want("team-a-prod", "api", "kv");
    a.namespace = "team-a-prod".into();
    let b = want("team-a", "api", "prod-kv");
    let got = names(&[a, b], &[]);
    assert_ne!(got[0], got[1]);
}

#[test]
fn an_overlong_original_name_gets_a_valid_unique_name() {
    let pod = "p".repeat(200);
    let ns = "n".repeat(63);
    let wanted = [
        want(&ns, &pod, "identity-one"),
        want(&ns, &pod, "identity-two"),
    ];
    assert!(wanted[0].owner.original_name().len() > MAX_OBJECT_NAME_LEN);
    let got = names(&wanted, &[]);
    for n in &got {
        assert!(is_dns_subdomain(n), "{n} ({} chars) is valid", n.len());
        assert!(n.starts_with(&pod[..100]), "{n} stays readable");
    }
    assert_ne!(got[0], got[1], "the cut names differ by their hash");
    assert_eq!(names(&wanted, &[]), got, "the same every pass");
}

#[test]
fn a_name_crafted_to_match_another_pods_fallback_does_not_block_it() {
    // A pod named so that its original name is a victim's first fallback name.
    let victims = [
        want("team-a-prod", "api", "kv"),
        want("team-a", "api", "prod-kv"),
    ];
    let target = victims[0].owner.hashed_name(0);
    let hash = target
        .strip_prefix("api-team-a-prod-kv-")
        .expect("fallback starts with the original name");
    // Pod `api-team-a-prod` in namespace `kv`, bound to an identity named like the hash.
    let attacker = want("kv", "api-team-a-prod", hash);
    assert_eq!(attacker.owner.original_name(), target);
    let mut wanted = victims.to_vec();
    wanted.push(attacker);
    for p in permutations(&wanted) {
        let got = names(&p, &[]);
        assert_eq!(got.iter().collect::<BTreeSet<_>>().len(), 3, "{got:?}");
    }
    // Even when the attacker already holds that name, the victim gets another.
    let existing = [record(&target, "kv", "api-team-a-prod", hash)];
    let got = names(&wanted, &existing);
    assert_eq!(got[2], target, "the holder keeps its record");
    assert_ne!(got[0], target);
    assert_eq!(got.iter().collect::<BTreeSet<_>>().len(), 3, "{got:?}");
}

#[test]
fn fallback_names_are_pinned() {
    // Changing the hash renames every fallback record on upgrade; this pins it.
    let o = RecordOwner::new("team-a-prod", "api", "kv");
    assert_eq!(o.hashed_name(0), o.hashed_name(0));
    assert_eq!(o.hashed_name(0).len(), "api-team-a-prod-kv-".len() + 16);
    assert_eq!(o.hashed_name(0), PINNED);
}

/// `printf 'podid/azureassignedidentity-name/v1\0team-a-prod\0api\0kv\0000\0' | sha256sum`,
/// first 16 hex digits.
const PINNED: &str = "api-team-a-prod-kv-3cf5c30d4ebdb35a";

#[test]
fn object_name_validity() {
    assert!(is_dns_subdomain("a-b.c-d"));
    assert!(is_dns_subdomain(&"a".repeat(253)));
    for bad in ["", "-a", "a-", "a..b", "A", "a_b", &"a".repeat(254)] {
        assert!(!is_dns_subdomain(bad), "{bad:?}");
    }
}

#[test]
fn a_fallback_name_is_kept_after_the_collision_is_gone() {
    let wanted = colliding();
    let first = names(&wanted[..2], &[]);
    let existing: Vec<ExistingRecord> = wanted[..2]
        .iter()
        .zip(&first)
        .map(|(w, n)| record(n, &w.owner.pod_namespace, &w.owner.pod, &w.owner.identity))
        .collect();
    // The other pod goes: the remaining record does not move to the original name.
    assert_eq!(names(&wanted[1..2], &existing[1..]), first[1..]);
}

#[test]
fn an_original_name_that_looks_like_a_fallback_is_kept_when_unique() {
    let wanted = [
        want("jobs", "run", "0123456789abcdef"),
        want("jobs", "other", "kv"),
    ];
    assert_eq!(
        names(&wanted, &[]),
        ["run-jobs-0123456789abcdef", "other-jobs-kv"]
    );
}
