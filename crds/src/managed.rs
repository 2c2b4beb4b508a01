//! The state podid keeps on an AzureIdentity that `podid identity add` manages (the AKS add-on's
//! flows): whether it is managed, and which scale sets and VMs carried its identity before podid
//! ([`PREEXISTING_TARGETS_ANNOTATION`]) or were given it by podid
//! ([`ASSIGNED_TARGETS_ANNOTATION`]). The CLI and podid-operator `--mode managed` read and write
//! it through these functions.

use std::collections::BTreeSet;

use crate::AzureIdentity;
use crate::names::{
    ASSIGNED_TARGETS_ANNOTATION, MANAGED_IDENTITY_ANNOTATION, MANAGED_IDENTITY_FINALIZER,
    PREEXISTING_TARGETS_ANNOTATION,
};

fn annotation<'a>(i: &'a AzureIdentity, key: &str) -> Option<&'a str> {
    i.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .map(String::as_str)
}

/// True when `podid identity add` created this AzureIdentity (podid keeps it on the node pools).
pub fn is_managed(i: &AzureIdentity) -> bool {
    annotation(i, MANAGED_IDENTITY_ANNOTATION) == Some("true")
}

/// True when podid-operator `--mode managed` holds the AzureIdentity with its finalizer.
pub fn has_finalizer(i: &AzureIdentity) -> bool {
    i.metadata
        .finalizers
        .iter()
        .flatten()
        .any(|f| f == MANAGED_IDENTITY_FINALIZER)
}

/// A comma-separated list of ARM ids, lower-cased.
pub fn parse_targets(value: Option<&str>) -> BTreeSet<String> {
    value
        .into_iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_ascii_lowercase)
        .collect()
}

/// The value of a target-list annotation.
pub fn format_targets(targets: &BTreeSet<String>) -> String {
    targets.iter().cloned().collect::<Vec<_>>().join(",")
}

/// The targets recorded as carrying the identity before podid did.
pub fn preexisting_targets(i: &AzureIdentity) -> BTreeSet<String> {
    parse_targets(annotation(i, PREEXISTING_TARGETS_ANNOTATION))
}

/// The targets recorded as given the identity by podid.
pub fn assigned_targets(i: &AzureIdentity) -> BTreeSet<String> {
    parse_targets(annotation(i, ASSIGNED_TARGETS_ANNOTATION))
}
