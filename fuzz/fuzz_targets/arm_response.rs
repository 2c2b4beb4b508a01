//! ARM's answers as podid-operator reads them: error bodies, a scale set's or VM's `identity`
//! block, and list pages of scale sets. Any body is read without panicking. An error keeps
//! ARM's code and message (else `Unknown` and the body) and is retried only for 429 and 5xx.
//! Identity ids are compared lower-cased, with client IDs only for listed identities; the
//! PATCH bodies computed from what was read take it exactly to `current + add - remove`, at most
//! 150 entries each. A scale set id read from a list page writes back as an id that reads the
//! same.
#![no_main]

use std::collections::BTreeSet;

use libfuzzer_sys::fuzz_target;
use podid_azure::{Error, IdentityState, MAX_IDENTITIES_PER_PATCH, identity_patches};
use podid_crds::provider::AssignmentTarget;
use serde_json::Value;

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().map(str::to_owned))
        .collect()
}

/// What ARM holds after the PATCH bodies, applied in order.
fn apply(state: &IdentityState, patches: &[Value]) -> BTreeSet<String> {
    let mut ids = state.user_assigned.clone();
    for p in patches {
        let identity = &p["identity"];
        match identity
            .get("userAssignedIdentities")
            .and_then(Value::as_object)
        {
            Some(entries) => {
                assert!(entries.len() <= MAX_IDENTITIES_PER_PATCH);
                assert!(
                    identity["type"]
                        .as_str()
                        .is_some_and(|t| t.contains("UserAssigned")),
                    "{p}"
                );
                for (k, v) in entries {
                    if v.is_null() {
                        ids.remove(k);
                    } else {
                        assert_eq!(v, &serde_json::json!({}));
                        ids.insert(k.clone());
                    }
                }
            }
            None => {
                let t = identity["type"].as_str().expect("a type");
                let keeps = if state.system_assigned {
                    "SystemAssigned"
                } else {
                    "None"
                };
                assert_eq!(t, keeps, "dropping the last identity keeps the system one");
                ids.clear();
            }
        }
    }
    ids
}

fuzz_target!(|data: &[u8]| {
    let Ok(body) = std::str::from_utf8(data) else {
        return;
    };
    let status = 400 + u16::from(data.first().copied().unwrap_or(0)) % 200;
    match Error::from_arm_answer(status, body, None) {
        e @ Error::Arm { .. } => {
            assert_eq!(e.is_retryable(), status == 429 || status >= 500);
            let Error::Arm { code, message, .. } = &e else {
                unreachable!()
            };
            let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
            assert_eq!(code, v["error"]["code"].as_str().unwrap_or("Unknown"));
            assert_eq!(message, v["error"]["message"].as_str().unwrap_or(body));
        }
        e => panic!("an ARM error answer gave {e}"),
    }
    let Ok(v) = serde_json::from_str::<Value>(body) else {
        return;
    };

    let state = IdentityState::from_arm(v.get("identity"));
    for id in &state.user_assigned {
        assert_eq!(id, &id.to_ascii_lowercase());
    }
    for (id, client) in &state.client_ids {
        assert!(
            state.user_assigned.contains(id),
            "client ID of an unlisted identity"
        );
        assert_eq!(client, &client.to_ascii_lowercase());
    }
    let add = strings(&v["add"]);
    let remove = strings(&v["remove"]);
    let patches = identity_patches(&state, &add, &remove);
    let add: BTreeSet<String> = add.iter().map(|a| a.to_ascii_lowercase()).collect();
    let remove: BTreeSet<String> = remove.iter().map(|r| r.to_ascii_lowercase()).collect();
    let expected: BTreeSet<String> = state
        .user_assigned
        .union(&add)
        .filter(|id| add.contains(*id) || !remove.contains(*id))
        .cloned()
        .collect();
    assert_eq!(apply(&state, &patches), expected);
    if expected == state.user_assigned {
        assert!(patches.is_empty(), "nothing to change sends nothing");
    }

    for item in v["value"].as_array().into_iter().flatten() {
        if let Some(t) = item["id"].as_str().and_then(AssignmentTarget::from_arm_id) {
            assert_eq!(
                AssignmentTarget::from_arm_id(&t.arm_id()).as_ref(),
                Some(&t)
            );
        }
    }
});
