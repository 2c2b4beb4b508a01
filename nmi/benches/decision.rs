//! Benchmark (not a test): the node agent's identity decision for one pod while the cluster
//! holds many bindings and identities that have nothing to do with it.
//! `cargo bench -p podid-nmi --bench decision`; results and their reading in docs/architecture.md.
//!
//! Each case is one pod with one binding and one identity of its own, among `n` unrelated
//! bindings (other selectors) and `n` unrelated identities, in three sizes. Two paths:
//! - `copy_and_scan`: the decision as the agent made it before the index: copy every binding and
//!   identity out of the watch caches, then match the pod against all of them;
//! - `index`: the decision as the agent makes it now, through its `ClusterView` read of the
//!   index that the watches keep current.
//!
//! Both modes are measured: managed (select among the pod's grants) and standard (the grants a
//! request is checked against before the wait for assignment).

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use podid_crds::policy::{IdentityRequest, Mode, pod_identities, select_identity};
use podid_crds::{AzureIdentity, AzureIdentityBinding};
use podid_nmi::resolve::{MultipleIdentities, select_managed, standard_grants, standard_preflight};
use podid_nmi::view::{ClusterView, MemoryState, MemoryView, PodInfo};
use podid_testkit::builders::{binding, msi, pod_facts};

const SIZES: [usize; 3] = [500, 5_000, 50_000];

struct Scene {
    pod: PodInfo,
    request: IdentityRequest,
    bindings: Vec<AzureIdentityBinding>,
    identities: Vec<AzureIdentity>,
    view: MemoryView,
}

/// `n` unrelated bindings and identities spread over 100 namespaces, plus the pod's own.
fn scene(n: usize) -> Scene {
    let mut bindings = Vec::with_capacity(n + 1);
    let mut identities = Vec::with_capacity(n + 1);
    for i in 0..n {
        let ns = format!("team-{}", i % 100);
        identities.push(msi(&ns, &format!("id-{i}"), &format!("client-{i}")));
        bindings.push(binding(
            &ns,
            &format!("b-{i}"),
            &format!("id-{i}"),
            &format!("sel-{i}"),
        ));
    }
    identities.push(msi("shop", "cart", "client-cart"));
    bindings.push(binding("shop", "cart", "cart", "cart"));
    let pod = PodInfo {
        facts: pod_facts("shop", "cart-0", Some("cart"), "node-0"),
        active: true,
        ..Default::default()
    };
    let view = MemoryView::new(MemoryState {
        pods: vec![pod.clone()],
        bindings: bindings.clone(),
        identities: identities.clone(),
        ..Default::default()
    });
    Scene {
        pod,
        request: IdentityRequest {
            client_id: Some("client-cart".into()),
            ..Default::default()
        },
        bindings,
        identities,
        view,
    }
}

/// The decision before the index: every object copied, then scanned.
fn copy_and_scan(s: &Scene, mode: Mode) -> Option<String> {
    let bindings = s.bindings.clone();
    let identities = s.identities.clone();
    let grants = pod_identities(
        &s.pod.facts,
        &bindings,
        &identities,
        mode.match_options(false),
    );
    let allowed: Vec<&AzureIdentity> = grants.grants.iter().map(|g| g.identity).collect();
    select_identity(&s.request, &allowed)
        .ok()
        .map(|i| i.spec.client_id.clone())
}

/// The decision now: the agent's own functions over the view's index.
fn through_index(s: &Scene, mode: Mode) -> Option<String> {
    let view: &dyn ClusterView = &s.view;
    match mode {
        Mode::Managed => select_managed(
            &s.pod,
            &s.request,
            &view.index(),
            MultipleIdentities::Refuse,
        )
        .ok()
        .map(|i| i.spec.client_id),
        Mode::Standard => {
            let granted = standard_grants(&s.pod, &view.index(), false);
            standard_preflight(&s.pod, &s.request, &granted, false).ok()?;
            granted.into_iter().next().map(|i| i.spec.client_id)
        }
    }
}

fn decision(c: &mut Criterion) {
    for mode in [Mode::Managed, Mode::Standard] {
        let mut group = c.benchmark_group(format!("decision/{mode:?}").to_lowercase());
        for n in SIZES {
            let s = scene(n);
            // Both paths decide the same before anything is timed.
            assert_eq!(copy_and_scan(&s, mode).as_deref(), Some("client-cart"));
            assert_eq!(through_index(&s, mode).as_deref(), Some("client-cart"));
            group.bench_with_input(BenchmarkId::new("copy_and_scan", n), &s, |b, s| {
                b.iter(|| copy_and_scan(black_box(s), mode))
            });
            group.bench_with_input(BenchmarkId::new("index", n), &s, |b, s| {
                b.iter(|| through_index(black_box(s), mode))
            });
        }
        group.finish();
    }
}

criterion_group!(benches, decision);
criterion_main!(benches);
