//! The owned index, fed by watch events as the agent and the operator feed it: after any sequence
//! of applies, deletes and relists it answers exactly as a full scan of the objects then present.

use std::collections::BTreeMap;

use kube::ResourceExt;
use podid_crds::index::{IdentityIndex, IndexObjects, ObjectKey};
use podid_crds::policy::{MatchOptions, PodFacts, PodIdentities, is_pod_excepted, pod_identities};
use podid_crds::*;
use podid_testkit::builders::{binding, exception, msi, pod_facts};

/// What a pod was granted and why each other matching binding was skipped, by name.
fn answer(x: &PodIdentities) -> (Vec<(String, String)>, Vec<String>) {
    (
        x.grants
            .iter()
            .map(|g| {
                (
                    ObjectKey::of(g.binding).to_string(),
                    ObjectKey::of(g.identity).to_string(),
                )
            })
            .collect(),
        x.skipped
            .iter()
            .map(|(b, s)| format!("{} {s:?}", ObjectKey::of(*b)))
            .collect(),
    )
}

/// The objects the index should now hold, kept the plain way.
#[derive(Default)]
struct Truth {
    bindings: BTreeMap<ObjectKey, AzureIdentityBinding>,
    identities: BTreeMap<ObjectKey, AzureIdentity>,
    exceptions: BTreeMap<ObjectKey, AzurePodIdentityException>,
}

fn pods() -> Vec<PodFacts> {
    let mut out = Vec::new();
    for ns in ["a", "b", "c"] {
        for label in [Some("s0"), Some("s1"), Some("s2"), Some(""), None] {
            let mut p = pod_facts(ns, "p", label, "node-0");
            p.labels.insert("app".into(), "web".into());
            out.push(p);
        }
    }
    out
}

fn check(index: &IdentityIndex, truth: &Truth, step: usize) {
    let bs: Vec<_> = truth.bindings.values().cloned().collect();
    let ids: Vec<_> = truth.identities.values().cloned().collect();
    for p in pods() {
        for o in [
            MatchOptions::standard(false),
            MatchOptions::standard(true),
            MatchOptions::managed(),
        ] {
            assert_eq!(
                answer(&index.pod_identities(&p, o)),
                answer(&pod_identities(&p, &bs, &ids, o)),
                "step {step}: pod {p:?} with {o:?}"
            );
        }
        let excepted = is_pod_excepted(
            &p,
            truth
                .exceptions
                .iter()
                .filter(|(k, _)| k.namespace == p.namespace)
                .map(|(_, e)| e),
        );
        assert_eq!(index.is_pod_excepted(&p), excepted, "step {step}: {p:?}");
    }
    assert_eq!(index.bindings().count(), truth.bindings.len());
    assert_eq!(index.identities().count(), truth.identities.len());
    assert_eq!(index.exceptions().count(), truth.exceptions.len());
}

/// A small deterministic generator, so a failure names its step and replays.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) % n as u64) as usize
    }
}

#[test]
fn random_watch_events_leave_the_index_answering_like_a_scan() {
    let namespaces = ["a", "b", "c"];
    let mut rng = Lcg(7);
    let mut index = IdentityIndex::default();
    let mut truth = Truth::default();
    for step in 0..600 {
        let ns = namespaces[rng.next(3)];
        match rng.next(10) {
            // A binding added or changed (its selector or identity may move).
            0..=2 => {
                let b = binding(
                    ns,
                    &format!("b{}", rng.next(6)),
                    &format!("id{}", rng.next(4)),
                    &format!("s{}", rng.next(3)),
                );
                truth.bindings.insert(ObjectKey::of(&b), b.clone());
                index.apply(b);
            }
            3..=4 => {
                let mut i = msi(ns, &format!("id{}", rng.next(4)), &format!("c{step}"));
                if rng.next(3) == 0 {
                    i.annotations_mut()
                        .insert(BEHAVIOR_ANNOTATION.into(), BEHAVIOR_NAMESPACED.into());
                }
                truth.identities.insert(ObjectKey::of(&i), i.clone());
                index.apply(i);
            }
            5 => {
                let e = exception(ns, &format!("e{}", rng.next(2)), &[("app", "WEB")]);
                truth.exceptions.insert(ObjectKey::of(&e), e.clone());
                index.apply(e);
            }
            6 => {
                let key = ObjectKey::new(ns, format!("b{}", rng.next(6)));
                truth.bindings.remove(&key);
                IndexObjects::<AzureIdentityBinding>::delete(&mut index, &key);
            }
            7 => {
                let key = ObjectKey::new(ns, format!("id{}", rng.next(4)));
                truth.identities.remove(&key);
                IndexObjects::<AzureIdentity>::delete(&mut index, &key);
            }
            8 => {
                let key = ObjectKey::new(ns, format!("e{}", rng.next(2)));
                truth.exceptions.remove(&key);
                IndexObjects::<AzurePodIdentityException>::delete(&mut index, &key);
            }
            // A relist (the watch expired): the index is replaced by what the list returned,
            // here the truth minus one binding that went while the watch was away.
            _ => {
                if let Some(k) = truth.bindings.keys().next().cloned() {
                    truth.bindings.remove(&k);
                }
                index.reset(truth.bindings.values().cloned().collect::<Vec<_>>());
                index.reset(truth.identities.values().cloned().collect::<Vec<_>>());
                index.reset(truth.exceptions.values().cloned().collect::<Vec<_>>());
            }
        }
        check(&index, &truth, step);
    }
}

#[test]
fn a_binding_whose_selector_changes_stops_matching_the_old_label() {
    let mut index = IdentityIndex::from_objects(
        &[binding("a", "b", "id", "old")],
        &[msi("a", "id", "c1")],
        [],
    );
    let opts = MatchOptions::standard(false);
    let on = |label: &str, index: &IdentityIndex| {
        index
            .pod_identities(&pod_facts("a", "p", Some(label), "n"), opts)
            .grants
            .len()
    };
    assert_eq!(on("old", &index), 1);
    index.apply(binding("a", "b", "id", "new"));
    assert_eq!((on("old", &index), on("new", &index)), (0, 1));
    IndexObjects::<AzureIdentityBinding>::delete(&mut index, &ObjectKey::new("a", "b"));
    assert_eq!((on("old", &index), on("new", &index)), (0, 0));
    assert_eq!(index.bindings().count(), 0);
}
