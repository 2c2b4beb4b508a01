//! `podid report --from-file` and `podid snapshot`: any text (YAML, multi-document YAML, a
//! `kubectl get -o json` List) is read without panicking; a rejected one names its file and
//! document, and for an object the field at fault. What is accepted writes as a snapshot that
//! reads back to the same snapshot, and the cutover plan built from it (`podid cutover plan
//! --write`, YAML and JSON) reads back to the same plan.
#![no_main]

use libfuzzer_sys::fuzz_target;
use podid_cli::Error;
use podid_cli::cutover::{CutoverPlan, Scope, build_plan};
use podid_cli::inventory::{ContextFromInventory, Inventory};
use podid_crds::plan::ClusterContext;
use podid_crds::policy::MatchOptions;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut inv = Inventory::default();
    match inv.add_text(text, "in.yaml") {
        Err(Error::Snapshot {
            file,
            document,
            object,
            field,
            message,
        }) => {
            assert_eq!(file, "in.yaml");
            assert!(document >= 1, "documents count from 1");
            assert!(!object.is_empty() && !message.is_empty());
            // A document that does not parse says where (when the parser knows); an object
            // that does not fit its kind names the field.
            assert!(
                object == "document" || !field.is_empty(),
                "{object}: {message}: no field named"
            );
        }
        Err(e) => panic!("a snapshot is rejected only with a snapshot error, not: {e}"),
        Ok(()) => {
            let written = inv
                .to_snapshot_yaml()
                .expect("an inventory writes as a snapshot");
            let mut back = Inventory::default();
            if let Err(e) = back.add_text(&written, "out.yaml") {
                panic!("a written snapshot reads back: {e}\n{written}");
            }
            assert_eq!(back.cluster, inv.cluster);
            assert!(back.facts_recorded);
            let rewritten = back.to_snapshot_yaml().expect("writes again");
            assert_eq!(written, rewritten, "the snapshot reads back to itself");

            let ctx = ClusterContext::from_inventory(&inv, MatchOptions::standard(false));
            let plan = build_plan(&inv, &ctx, &[], &Scope::default(), false);
            let yaml = serde_yaml::to_string(&plan).expect("the plan writes as YAML");
            let from_yaml: CutoverPlan = serde_yaml::from_str(&yaml)
                .unwrap_or_else(|e| panic!("the YAML plan reads back: {e}\n{yaml}"));
            assert_eq!(from_yaml, plan);
            let json = serde_json::to_string_pretty(&plan).expect("the plan writes as JSON") + "\n";
            let from_json: CutoverPlan = serde_json::from_str(&json)
                .unwrap_or_else(|e| panic!("the JSON plan reads back: {e}\n{json}"));
            assert_eq!(from_json, plan);
        }
    }
});
