//! The `aadpodidentity.k8s.io/v1` custom resources and the pure pod-identity rules shared by
//! podid-operator, podid-nmi and the podid CLI. No I/O lives here.

pub mod cutover;
pub mod index;
pub mod managed;
pub mod migration;
pub mod names;
pub mod plan;
pub mod policy;
pub mod provider;
pub mod reason;
pub mod serving;
mod types;

pub use names::*;
pub use types::*;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

/// Errors of the shared domain logic.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request names an identity the pod is not bound to.
    #[error("the requested identity is not bound to this pod")]
    IdentityNotBound,
    /// The pod may use no identity at all.
    #[error("no identity is bound to this pod")]
    NoIdentity,
    /// The request names no identity and the pod may use several.
    #[error(
        "{count} identities are bound to this pod ({}); name one with client_id, object_id or msi_res_id",
        names.join(", ")
    )]
    AmbiguousIdentity { count: usize, names: Vec<String> },
    /// The CRDs could not be rendered as YAML.
    #[error("rendering CRD YAML: {0}")]
    Yaml(#[from] serde_yaml::Error),
}

/// The CustomResourceDefinitions, exactly as podid installs them: the four of pod identity and
/// podid's own `WorkloadMigration` ([`migration`]).
///
/// AzureAssignedIdentity has no status subresource, like the original: the original MIC writes
/// `status` through the main resource, and would silently lose it otherwise (see docs/parity.md).
pub fn all_crds() -> Vec<CustomResourceDefinition> {
    let mut assigned = AzureAssignedIdentity::crd();
    for v in &mut assigned.spec.versions {
        v.subresources = None;
    }
    let mut binding = AzureIdentityBinding::crd();
    require_spec_field(&mut binding, "selector");
    let mut crds = vec![
        AzureIdentity::crd(),
        binding,
        assigned,
        AzurePodIdentityException::crd(),
        migration::WorkloadMigration::crd(),
    ];
    for crd in &mut crds {
        for v in &mut crd.spec.versions {
            if let Some(schema) = v
                .schema
                .as_mut()
                .and_then(|s| s.open_api_v3_schema.as_mut())
            {
                strip_defaults(schema);
            }
        }
    }
    crds
}

type Props = k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaProps;

/// Our Rust types read absent fields as empty (`serde(default)`), which schemars turns into
/// schema defaults. The original CRDs have none, and defaults would rewrite stored objects, so
/// they are removed.
fn strip_defaults(p: &mut Props) {
    p.default = None;
    for child in p.properties.iter_mut().flat_map(|m| m.values_mut()) {
        strip_defaults(child);
    }
    if let Some(k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaPropsOrArray::Schema(items)) = p.items.as_mut() {
        strip_defaults(items);
    }
}

/// Marks `spec.<field>` required and non-empty.
fn require_spec_field(crd: &mut CustomResourceDefinition, field: &str) {
    for v in &mut crd.spec.versions {
        let Some(spec) = v
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
            .and_then(|root| root.properties.as_mut())
            .and_then(|props| props.get_mut("spec"))
        else {
            continue;
        };
        spec.required
            .get_or_insert_with(Vec::new)
            .push(field.into());
        if let Some(f) = spec.properties.as_mut().and_then(|p| p.get_mut(field)) {
            f.min_length = Some(1);
        }
    }
}

/// [`all_crds`] as one multi-document YAML stream (what `crds/crds.yaml` holds).
pub fn crds_yaml() -> Result<String, Error> {
    yaml_of(&all_crds(), "crdgen", "")
}

/// The oldest Kubernetes minor podid supports (docs/compatibility.md).
pub const OLDEST_KUBE_MINOR: u32 = 30;

/// The first minor whose API server honours `selectableFields` by default (beta in 1.31, GA in
/// 1.32; alpha and off in 1.30, where the field is dropped on write).
pub const SELECTABLE_FIELDS_MINOR: u32 = 31;

/// The CRDs for an API server of Kubernetes 1.`minor`: [`all_crds`], without the fields that
/// minor does not know or drops (`selectableFields` before
/// [`SELECTABLE_FIELDS_MINOR`]). Everything else in them is GA since
/// [`OLDEST_KUBE_MINOR`] or earlier.
pub fn crds_for(minor: u32) -> Vec<CustomResourceDefinition> {
    let mut crds = all_crds();
    if minor < SELECTABLE_FIELDS_MINOR {
        for v in crds.iter_mut().flat_map(|c| c.spec.versions.iter_mut()) {
            v.selectable_fields = None;
        }
    }
    crds
}

/// The file of the CRDs for servers before [`SELECTABLE_FIELDS_MINOR`], next to `crds.yaml`.
pub const PRE_SELECTABLE_FIELDS_FILE: &str = "crds-pre-1.31.yaml";

/// The committed file holding [`crds_yaml_for`]`(minor)`, relative to `crds/`.
pub fn crds_file_for(minor: u32) -> &'static str {
    if minor >= SELECTABLE_FIELDS_MINOR {
        "crds.yaml"
    } else {
        PRE_SELECTABLE_FIELDS_FILE
    }
}

/// [`crds_for`] as YAML: `crds/crds.yaml` for 1.31 and later, `crds/crds-pre-1.31.yaml` before.
pub fn crds_yaml_for(minor: u32) -> Result<String, Error> {
    if minor >= SELECTABLE_FIELDS_MINOR {
        return crds_yaml();
    }
    yaml_of(
        &crds_for(minor),
        "crdgen -- --kube-minor 30",
        &format!(
            "# For Kubernetes 1.{OLDEST_KUBE_MINOR} (before 1.{SELECTABLE_FIELDS_MINOR}): crds.yaml without selectableFields.\n"
        ),
    )
}

fn yaml_of(crds: &[CustomResourceDefinition], command: &str, note: &str) -> Result<String, Error> {
    let mut out = format!(
        "# Generated by `cargo run -p podid-crds --bin {command}`; do not edit.\n# Source of truth: crds/src/types.rs\n{note}"
    );
    for crd in crds {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(crd)?);
    }
    Ok(out)
}

/// The minor of a Kubernetes version as the API server's `/version` reports it (`"30"`,
/// `"30+"` on some providers).
pub fn kube_minor(minor: &str) -> Option<u32> {
    minor.trim_end_matches('+').parse().ok()
}
