//! The cutover plan file (`podid cutover plan --write FILE`, YAML, or JSON with `-o json`),
//! read back as a `CutoverPlan`, perhaps edited by hand: any text is read without panicking;
//! a plan read from it writes (YAML and JSON) and reads back equal, and a text that is both
//! JSON and YAML gives the same plan either way. A rejected plan's error names a missing
//! field.
#![no_main]

use libfuzzer_sys::fuzz_target;
use podid_cli::cutover::CutoverPlan;

fn round_trips(plan: &CutoverPlan) {
    let yaml = serde_yaml::to_string(plan).expect("a plan writes as YAML");
    let back: CutoverPlan = serde_yaml::from_str(&yaml)
        .unwrap_or_else(|e| panic!("the YAML plan reads back: {e}\n{yaml}"));
    assert_eq!(&back, plan, "YAML round trip\n{yaml}");
    let json = serde_json::to_string_pretty(plan).expect("a plan writes as JSON") + "\n";
    let back: CutoverPlan = serde_json::from_str(&json)
        .unwrap_or_else(|e| panic!("the JSON plan reads back: {e}\n{json}"));
    assert_eq!(&back, plan, "JSON round trip\n{json}");
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let from_yaml = serde_path_to_error::deserialize::<_, CutoverPlan>(
        serde_yaml::Deserializer::from_str(text),
    );
    match &from_yaml {
        Ok(plan) => round_trips(plan),
        Err(e) => {
            // A missing field is named, and where it is missing.
            let message = e.inner().to_string();
            if let Some(rest) = message.strip_prefix("missing field `") {
                assert!(
                    rest.split('`').next().is_some_and(|f| !f.is_empty()),
                    "{message}"
                );
            }
        }
    }
    if let Ok(plan) = serde_json::from_str::<CutoverPlan>(text) {
        round_trips(&plan);
        if let Ok(y) = &from_yaml {
            assert_eq!(y, &plan, "JSON read as YAML gives the same plan");
        }
    }
});
