//! Selection never grants an identity the pod is not bound to.
#![no_main]

use libfuzzer_sys::fuzz_target;
use podid_crds::policy::{IdentityRequest, PodFacts};
use podid_crds::{
    AzureIdentity, AzureIdentityBinding, AzureIdentityBindingSpec, AzureIdentitySpec,
};
use podid_nmi::resolve::{select_assigned, select_managed};
use podid_nmi::view::PodInfo;

const NAMES: [&str; 4] = ["a", "b", "A", ""];
const NAMESPACES: [&str; 2] = ["ns", "other"];

fn pick<'a>(set: &[&'a str], b: u8) -> &'a str {
    set[b as usize % set.len()]
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let (head, rest) = data.split_at(4);
    let mut identities = Vec::new();
    let mut bindings = Vec::new();
    for chunk in rest.chunks_exact(4) {
        let ns = pick(&NAMESPACES, chunk[0]);
        let name = pick(&NAMES, chunk[1]);
        let mut id = AzureIdentity::new(
            name,
            AzureIdentitySpec {
                client_id: format!("client-{}", pick(&NAMES, chunk[2])),
                resource_id: format!(
                    "/subscriptions/s/resourcegroups/r/providers/Microsoft.ManagedIdentity/userAssignedIdentities/{name}"
                ),
                ..Default::default()
            },
        );
        id.metadata.namespace = Some(ns.into());
        identities.push(id);
        let mut b = AzureIdentityBinding::new(
            &format!("b{}", chunk[3]),
            AzureIdentityBindingSpec {
                azure_identity: name.into(),
                selector: pick(&NAMES, chunk[3]).into(),
                ..Default::default()
            },
        );
        b.metadata.namespace = Some(ns.into());
        bindings.push(b);
    }
    let pod = PodInfo {
        facts: PodFacts {
            namespace: pick(&NAMESPACES, head[0]).into(),
            name: "p".into(),
            labels: [(
                "aadpodidbinding".to_owned(),
                pick(&NAMES, head[1]).to_owned(),
            )]
            .into(),
            node_name: "n".into(),
        },
        ..Default::default()
    };
    let request = IdentityRequest {
        client_id: (head[2] & 1 == 1).then(|| format!("CLIENT-{}", pick(&NAMES, head[3]))),
        ..Default::default()
    };
    if let Ok(chosen) = select_managed(
        &pod,
        &request,
        &podid_crds::index::IdentityIndex::from_objects(&bindings, &identities, []),
        podid_nmi::resolve::MultipleIdentities::Refuse,
    ) {
        assert_eq!(
            chosen.metadata.namespace.as_deref(),
            Some(pod.facts.namespace.as_str())
        );
        let bound = bindings.iter().any(|b| {
            b.metadata.namespace == chosen.metadata.namespace
                && b.spec.azure_identity == chosen.metadata.name.clone().unwrap_or_default()
                && Some(b.spec.selector.as_str())
                    == pod.facts.labels.get("aadpodidbinding").map(String::as_str)
        });
        assert!(bound, "managed mode chose an identity no binding grants");
        if let Some(c) = &request.client_id {
            assert!(c.eq_ignore_ascii_case(&chosen.spec.client_id));
        }
    }
    if let Ok(chosen) = select_assigned(
        &pod,
        &request,
        &identities,
        &identities,
        head[0] & 2 == 2,
        podid_nmi::resolve::MultipleIdentities::Refuse,
    ) {
        assert!(identities.iter().any(|i| i.metadata == chosen.metadata));
        if let Some(c) = &request.client_id {
            assert!(c.eq_ignore_ascii_case(&chosen.spec.client_id));
        }
    }
});
