//! `podid identity add|delete|list` and `podid exception add|update|delete|list`: the AKS
//! pod-identity add-on's flows (`az aks pod-identity ...`) over the cluster's CRDs and ARM.
//!
//! The decisions are plain functions over plain data (input validation with the add-on's rules,
//! the objects to create, what a delete may remove); [`run_add`], [`run_delete`] and the list
//! functions do the reading and writing around them. A command reads and checks everything it
//! needs before its first write, so bad input changes nothing; `--dry-run` stops after the
//! reads and prints the changes it would make.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, Client};
use podid_azure::{
    Arm, MANAGED_IDENTITY_OPERATOR_ROLE, MsiCredentials, NodePoolIdentities, role_definition_id,
};
use podid_crds::managed::format_targets;
use podid_crds::names::{
    AKS_NETWORK_PLUGIN_LABEL, ASSIGNED_TARGETS_ANNOTATION, MANAGED_IDENTITY_ANNOTATION, POD_LABEL,
    PREEXISTING_TARGETS_ANNOTATION, ROLE_ASSIGNMENT_ANNOTATION,
};
use podid_crds::provider::{AssignmentTarget, NodeResource};
use podid_crds::{
    AzureIdentity, AzureIdentityBinding, AzureIdentityBindingSpec, AzureIdentitySpec,
    AzurePodIdentityException, AzurePodIdentityExceptionSpec, IdentityType,
};
use serde::Serialize;

use crate::Error;

/// Longest namespace or exception name: an RFC 1123 label.
pub const MAX_LABEL_LEN: usize = 63;
/// The add-on names an identity's binding `<name>-binding`.
pub const BINDING_SUFFIX: &str = "-binding";
/// Longest identity name: its binding's name must still be an RFC 1123 label.
pub const MAX_IDENTITY_NAME_LEN: usize = MAX_LABEL_LEN - BINDING_SUFFIX.len();

/// What `podid identity add` prints on a kubenet cluster (and keeps printing with
/// `--allow-kubenet`): the add-on's reason and the mitigation.
pub const KUBENET_MITIGATION: &str = "\
this cluster uses the kubenet network plugin: a pod with the NET_RAW capability can spoof \
another pod's address and get its identity's tokens. Pod identity refuses kubenet unless told \
otherwise (--allow-kubenet, as the add-on's --enable-pod-identity-with-kubenet). Mitigate: drop \
NET_RAW from every pod outside kube-system (for example a Gatekeeper K8sPSPCapabilities \
constraint with requiredDropCapabilities: [\"NET_RAW\"], or Pod Security Admission's \
'restricted' level, which drops ALL capabilities).";

fn usage(flag: &str, message: impl std::fmt::Display) -> Error {
    Error::Usage(format!("{flag}: {message}"))
}

/// An RFC 1123 label: lowercase letters, digits and `-`, starting and ending alphanumeric, at
/// most `max` characters.
pub fn check_label(flag: &str, value: &str, max: usize) -> Result<(), Error> {
    if value.is_empty() {
        return Err(Error::Usage(format!("{flag} is required")));
    }
    let b = value.as_bytes();
    let alnum = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    if !(b.first().is_some_and(alnum)
        && b.last().is_some_and(alnum)
        && b.iter().all(|c| alnum(c) || *c == b'-'))
    {
        return Err(usage(
            flag,
            format!(
                "{value:?} is not a valid name: it must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (RFC 1123 label)"
            ),
        ));
    }
    if value.len() > max {
        return Err(usage(
            flag,
            format!(
                "{value:?} is {} characters long; at most {max} are allowed",
                value.len()
            ),
        ));
    }
    Ok(())
}

/// An identity name: an RFC 1123 label short enough that `<name>-binding` is one too.
pub fn check_identity_name(value: &str) -> Result<(), Error> {
    check_label("--name", value, MAX_IDENTITY_NAME_LEN)
}

/// A Kubernetes label value (the binding selector is matched against the pod's
/// `aadpodidbinding` label): at most 63 characters, alphanumeric at both ends, `-`, `_` and `.`
/// between. Empty is not allowed: a binding with an empty selector matches no pod.
pub fn check_label_value(flag: &str, value: &str) -> Result<(), Error> {
    let b = value.as_bytes();
    let alnum = |c: &u8| c.is_ascii_alphanumeric();
    if b.is_empty()
        || b.len() > MAX_LABEL_LEN
        || !(b.first().is_some_and(alnum)
            && b.last().is_some_and(alnum)
            && b.iter()
                .all(|c| alnum(c) || matches!(c, b'-' | b'_' | b'.')))
    {
        return Err(usage(
            flag,
            format!(
                "{value:?} is not a valid label value: at most 63 characters, alphanumeric at both ends, with '-', '_' or '.' between"
            ),
        ));
    }
    Ok(())
}

/// A Kubernetes label key: an optional DNS-subdomain prefix and `/`, then a name of at most 63
/// characters, alphanumeric at both ends, `-`, `_` and `.` between.
fn valid_label_key(key: &str) -> bool {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    let b = name.as_bytes();
    let alnum = |c: &u8| c.is_ascii_alphanumeric();
    prefix.is_none_or(podid_crds::policy::is_dns_subdomain)
        && !b.is_empty()
        && b.len() <= MAX_LABEL_LEN
        && b.first().is_some_and(alnum)
        && b.last().is_some_and(alnum)
        && b.iter()
            .all(|c| alnum(c) || matches!(c, b'-' | b'_' | b'.'))
}

/// `--pod-labels k=v,k2=v2` (also repeatable): every pair a valid label, at least one, no key
/// twice.
pub fn parse_pod_labels(values: &[String]) -> Result<BTreeMap<String, String>, Error> {
    let mut out = BTreeMap::new();
    for item in values.iter().flat_map(|v| v.split(',')) {
        let Some((k, v)) = item.split_once('=') else {
            return Err(usage(
                "--pod-labels",
                format!("invalid label {item:?}: label definition must be of format name=value"),
            ));
        };
        let (k, v) = (k.trim(), v.trim());
        if !valid_label_key(k) {
            return Err(usage(
                "--pod-labels",
                format!("invalid label {item:?}: {k:?} is not a valid label key"),
            ));
        }
        if !v.is_empty() {
            check_label_value("--pod-labels", v)?;
        }
        if out.insert(k.to_owned(), v.to_owned()).is_some() {
            return Err(usage("--pod-labels", format!("label {k:?} is given twice")));
        }
    }
    if out.is_empty() {
        return Err(Error::Usage("--pod-labels is required".into()));
    }
    Ok(out)
}

/// The ARM id of a user-assigned identity, as the add-on parses it.
pub fn check_identity_resource_id(value: &str) -> Result<(), Error> {
    if podid_crds::policy::is_valid_resource_id(value) {
        Ok(())
    } else {
        Err(usage(
            "--identity-resource-id",
            format!(
                "cannot parse identity name from provided resource id {value:?}: expected /subscriptions/<sub>/resourceGroups/<rg>/providers/Microsoft.ManagedIdentity/userAssignedIdentities/<name>"
            ),
        ))
    }
}

/// `--aks-cluster-id`: the ARM id of an AKS cluster.
pub fn check_aks_cluster_id(c: &str) -> Result<(), Error> {
    let parts: Vec<&str> = c.split('/').collect();
    let ok = parts.len() == 9
        && parts[0].is_empty()
        && parts[1..].iter().all(|p| !p.is_empty())
        && parts[1].eq_ignore_ascii_case("subscriptions")
        && parts[3].eq_ignore_ascii_case("resourcegroups")
        && parts[5].eq_ignore_ascii_case("providers")
        && parts[6].eq_ignore_ascii_case("microsoft.containerservice")
        && parts[7].eq_ignore_ascii_case("managedclusters");
    if ok {
        Ok(())
    } else {
        Err(usage(
            "--aks-cluster-id",
            format!(
                "{c:?} is not the ARM id of an AKS cluster (/subscriptions/<sub>/resourceGroups/<rg>/providers/Microsoft.ContainerService/managedClusters/<name>)"
            ),
        ))
    }
}

/// A GUID (an Entra object, client, tenant or subscription ID).
pub fn check_guid(flag: &str, value: &str) -> Result<(), Error> {
    let groups: Vec<&str> = value.split('-').collect();
    let ok = groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|c| c.is_ascii_hexdigit()));
    if ok {
        Ok(())
    } else {
        Err(usage(
            flag,
            format!(
                "{value:?} is not a GUID; expected one such as 00000000-0000-0000-0000-000000000000"
            ),
        ))
    }
}

/// The binding `podid identity add` creates for identity `name`.
pub fn binding_name(name: &str) -> String {
    format!("{name}{BINDING_SUFFIX}")
}

/// True when a node says (AKS's node label) that the cluster uses kubenet.
pub fn is_kubenet<'a>(nodes: impl IntoIterator<Item = &'a Node>) -> bool {
    nodes.into_iter().any(|n| {
        n.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(AKS_NETWORK_PLUGIN_LABEL))
            .is_some_and(|p| p.eq_ignore_ascii_case("kubenet"))
    })
}

/// The scale sets (and availability-set VMs) of the cluster's node pools, from the nodes'
/// provider IDs.
pub fn node_pool_targets<'a>(
    nodes: impl IntoIterator<Item = &'a Node>,
) -> BTreeSet<AssignmentTarget> {
    nodes
        .into_iter()
        .filter_map(|n| n.spec.as_ref()?.provider_id.as_deref())
        .filter_map(NodeResource::parse)
        .map(|r| r.target())
        .collect()
}

fn annotation<'a>(i: &'a AzureIdentity, key: &str) -> Option<&'a str> {
    i.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .map(String::as_str)
}

pub use podid_crds::managed::{assigned_targets, has_finalizer, is_managed, preexisting_targets};

/// The role assignment recorded on a managed AzureIdentity.
pub fn role_assignment(i: &AzureIdentity) -> Option<&str> {
    annotation(i, ROLE_ASSIGNMENT_ANNOTATION).filter(|s| !s.is_empty())
}

/// The other managed AzureIdentities of the same Azure identity (compared case-insensitively),
/// `except` excluded: they share its node-pool assignment and role assignment.
pub fn siblings<'a>(
    all: &'a [AzureIdentity],
    resource_id: &str,
    except: Option<(&str, &str)>,
) -> Vec<&'a AzureIdentity> {
    all.iter()
        .filter(|i| is_managed(i) && i.spec.resource_id.eq_ignore_ascii_case(resource_id))
        .filter(|i| {
            except.is_none_or(|(ns, name)| {
                i.metadata.namespace.as_deref() != Some(ns)
                    || i.metadata.name.as_deref() != Some(name)
            })
        })
        .collect()
}

/// What `podid identity add` creates.
#[derive(Clone, Debug)]
pub struct AddObjects {
    pub identity: AzureIdentity,
    pub binding: AzureIdentityBinding,
}

/// The AzureIdentity and AzureIdentityBinding of `podid identity add` (selector defaulting to
/// the name, as the add-on's), annotated as podid's with the shared state of its Azure identity:
/// the targets that carried it before podid, those podid assigns it to, its role assignment.
#[allow(clippy::too_many_arguments)]
pub fn add_objects(
    namespace: &str,
    name: &str,
    resource_id: &str,
    client_id: &str,
    selector: Option<&str>,
    preexisting: &BTreeSet<String>,
    assigned: &BTreeSet<String>,
    role_assignment: Option<&str>,
) -> AddObjects {
    let mut annotations =
        BTreeMap::from([(MANAGED_IDENTITY_ANNOTATION.to_owned(), "true".to_owned())]);
    if !preexisting.is_empty() {
        annotations.insert(
            PREEXISTING_TARGETS_ANNOTATION.to_owned(),
            format_targets(preexisting),
        );
    }
    if !assigned.is_empty() {
        annotations.insert(
            ASSIGNED_TARGETS_ANNOTATION.to_owned(),
            format_targets(assigned),
        );
    }
    if let Some(r) = role_assignment {
        annotations.insert(ROLE_ASSIGNMENT_ANNOTATION.to_owned(), r.to_owned());
    }
    let meta = |n: String, a: Option<BTreeMap<String, String>>| kube::api::ObjectMeta {
        name: Some(n),
        namespace: Some(namespace.to_owned()),
        annotations: a,
        ..Default::default()
    };
    AddObjects {
        identity: AzureIdentity {
            metadata: meta(name.to_owned(), Some(annotations)),
            spec: AzureIdentitySpec {
                type_: IdentityType::UserAssignedMsi,
                resource_id: resource_id.to_owned(),
                client_id: client_id.to_owned(),
                ..Default::default()
            },
            status: None,
        },
        binding: AzureIdentityBinding {
            metadata: meta(
                binding_name(name),
                Some(BTreeMap::from([(
                    MANAGED_IDENTITY_ANNOTATION.to_owned(),
                    "true".to_owned(),
                )])),
            ),
            spec: AzureIdentityBindingSpec {
                azure_identity: name.to_owned(),
                selector: selector.unwrap_or(name).to_owned(),
                ..Default::default()
            },
            status: None,
        },
    }
}

/// What `podid identity delete` removes beyond the AzureIdentity.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeletePlan {
    /// podid's bindings of the identity (in its namespace).
    pub bindings: Vec<String>,
    /// Node-pool targets to take the Azure identity off: the node pools and those recorded as
    /// given it by podid (a pool scaled to zero has no node), all but the pre-existing ones,
    /// and none while another managed AzureIdentity of the same Azure identity remains.
    pub unassign: Vec<AssignmentTarget>,
    /// The role assignment to delete (podid's, and only with the last such AzureIdentity).
    pub role_assignment: Option<String>,
}

/// Decides what deleting managed AzureIdentity `target` removes, given every AzureIdentity and
/// binding in the cluster and the node-pool targets (from the nodes; the targets recorded in
/// its assigned-targets annotation are added).
pub fn plan_delete(
    target: &AzureIdentity,
    identities: &[AzureIdentity],
    bindings: &[AzureIdentityBinding],
    pools: &BTreeSet<AssignmentTarget>,
) -> DeletePlan {
    let ns = target.metadata.namespace.as_deref().unwrap_or_default();
    let name = target.metadata.name.as_deref().unwrap_or_default();
    let mut plan = DeletePlan {
        bindings: bindings
            .iter()
            .filter(|b| {
                b.metadata.namespace.as_deref() == Some(ns) && b.spec.azure_identity == name
            })
            .filter(|b| {
                b.metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(MANAGED_IDENTITY_ANNOTATION))
                    .is_some_and(|v| v == "true")
            })
            .filter_map(|b| b.metadata.name.clone())
            .collect(),
        ..Default::default()
    };
    if !siblings(identities, &target.spec.resource_id, Some((ns, name))).is_empty() {
        return plan;
    }
    let kept = preexisting_targets(target);
    let mut seen = BTreeSet::new();
    plan.unassign = pools
        .iter()
        .cloned()
        .chain(
            assigned_targets(target)
                .iter()
                .filter_map(|id| AssignmentTarget::from_arm_id(id)),
        )
        .filter(|t| {
            let id = t.arm_id().to_ascii_lowercase();
            !kept.contains(&id) && seen.insert(id)
        })
        .collect();
    plan.role_assignment = role_assignment(target).map(str::to_owned);
    plan
}

/// One change a command made, or would make with `--dry-run`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Change {
    /// create, delete, update, assign, unassign, grant, revoke, keep.
    pub action: String,
    pub kind: String,
    pub name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

impl Change {
    fn new(action: &str, kind: &str, name: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            action: action.into(),
            kind: kind.into(),
            name: name.into(),
            detail: detail.into(),
        }
    }
}

/// Output formats of these commands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Table,
    Json,
    Yaml,
}

/// Renders rows: a table (the header from `header`, each row from `cells`), or the serialized
/// rows.
pub fn render_rows<T: Serialize>(
    rows: &[T],
    output: Output,
    header: &[&str],
    cells: impl Fn(&T) -> Vec<String>,
) -> Result<String, Error> {
    Ok(match output {
        Output::Json => serde_json::to_string_pretty(rows)? + "\n",
        Output::Yaml => serde_yaml::to_string(rows)?,
        Output::Table => {
            let mut lines: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
            lines.extend(rows.iter().map(&cells));
            let widths: Vec<usize> = (0..header.len())
                .map(|c| lines.iter().map(|l| l[c].len()).max().unwrap_or(0))
                .collect();
            let mut out = String::new();
            for l in &lines {
                let row: Vec<String> = l
                    .iter()
                    .zip(&widths)
                    .map(|(cell, w)| format!("{cell:<w$}"))
                    .collect();
                out.push_str(row.join("   ").trim_end());
                out.push('\n');
            }
            out
        }
    })
}

/// Renders the changes of a command; `dry_run` says they were not made.
pub fn render_changes(changes: &[Change], output: Output, dry_run: bool) -> Result<String, Error> {
    let mut out = render_rows(
        changes,
        output,
        &["ACTION", "KIND", "NAME", "DETAIL"],
        |c| {
            let action = if dry_run {
                format!("{} (dry run)", c.action)
            } else {
                c.action.clone()
            };
            vec![action, c.kind.clone(), c.name.clone(), c.detail.clone()]
        },
    )?;
    if dry_run && output == Output::Table {
        out.push_str("dry run: nothing was changed\n");
    }
    Ok(out)
}

/// Azure as the identity commands use it.
#[derive(Clone)]
pub struct Azure {
    pub arm: Arm,
    pub msi: MsiCredentials,
    pub subscription_id: String,
}

impl Azure {
    pub fn new(
        cloud: &podid_azure::CloudConfig,
        credential: Arc<dyn podid_azure::TokenCredential>,
        http: reqwest::Client,
    ) -> Result<Self, Error> {
        let e = &cloud.endpoints;
        let mut arm = Arm::new(&e.arm, credential.clone(), http.clone());
        arm.audience = e.arm_audience.clone();
        arm.poll_interval = std::time::Duration::from_millis(500);
        let msi = MsiCredentials::new(&e.arm, &e.arm_audience, credential, http)?;
        Ok(Self {
            arm,
            msi,
            subscription_id: cloud.subscription_id.clone(),
        })
    }
}

/// `podid identity add`'s input.
#[derive(Clone, Debug, Default)]
pub struct AddRequest {
    pub namespace: String,
    pub name: String,
    pub resource_id: String,
    pub selector: Option<String>,
    pub no_role_assignment: bool,
    pub no_assign: bool,
    pub allow_kubenet: bool,
    /// The kubelet identity's object ID, when given.
    pub kubelet_object_id: Option<String>,
    /// The AKS cluster's ARM id, to read the kubelet identity from.
    pub aks_cluster_id: Option<String>,
    pub dry_run: bool,
}

impl AddRequest {
    /// Every check that needs no cluster and no Azure.
    pub fn validate(&self) -> Result<(), Error> {
        check_label("--namespace", &self.namespace, MAX_LABEL_LEN)?;
        check_identity_name(&self.name)?;
        check_identity_resource_id(&self.resource_id)?;
        if let Some(s) = &self.selector {
            check_label_value("--binding-selector", s)?;
        }
        if let Some(o) = &self.kubelet_object_id {
            check_guid("--kubelet-object-id", o)?;
        }
        if let Some(c) = &self.aks_cluster_id {
            check_aks_cluster_id(c)?;
        }
        if !self.no_role_assignment
            && self.kubelet_object_id.is_none()
            && self.aks_cluster_id.is_none()
        {
            return Err(Error::Usage(
                "--kubelet-object-id or --aks-cluster-id is needed to grant the cluster's kubelet identity \"Managed Identity Operator\" on the identity (or pass --no-role-assignment)".into(),
            ));
        }
        Ok(())
    }
}

fn arm_not_found(e: &podid_azure::Error) -> bool {
    matches!(e, podid_azure::Error::Arm { status: 404, .. })
}

async fn list_all<K>(client: &Client) -> Result<Vec<K>, Error>
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    Ok(Api::<K>::all(client.clone())
        .list(&ListParams::default())
        .await?
        .items)
}

fn post(dry_run: bool) -> PostParams {
    PostParams {
        dry_run,
        ..Default::default()
    }
}

/// `podid identity add`: reads and checks everything, then (unless dry run) grants the role,
/// creates the AzureIdentity and binding, and assigns the identity to the node pools.
pub async fn run_add(
    client: &Client,
    azure: &Azure,
    req: &AddRequest,
    mut warn: impl FnMut(&str),
) -> Result<Vec<Change>, Error> {
    req.validate()?;
    let (ns, name) = (req.namespace.as_str(), req.name.as_str());
    // The cluster.
    let nodes: Vec<Node> = list_all(client).await?;
    if is_kubenet(&nodes) {
        if !req.allow_kubenet {
            return Err(Error::Refused(format!(
                "{KUBENET_MITIGATION}\nrefused: pass --allow-kubenet to add the identity anyway"
            )));
        }
        warn(KUBENET_MITIGATION);
    }
    let identities: Vec<AzureIdentity> = list_all(client).await?;
    let ids: Api<AzureIdentity> = Api::namespaced(client.clone(), ns);
    let binds: Api<AzureIdentityBinding> = Api::namespaced(client.clone(), ns);
    if ids.get_opt(name).await?.is_some() {
        return Err(usage(
            "--name",
            format!("an AzureIdentity {ns}/{name} already exists"),
        ));
    }
    if binds.get_opt(&binding_name(name)).await?.is_some() {
        return Err(usage(
            "--name",
            format!(
                "an AzureIdentityBinding {ns}/{} already exists",
                binding_name(name)
            ),
        ));
    }
    // Azure.
    let identity = match azure.msi.user_assigned_identity(&req.resource_id).await {
        Ok(i) => i,
        Err(e) if arm_not_found(&e) => {
            return Err(usage(
                "--identity-resource-id",
                format!("identity {} not found", req.resource_id),
            ));
        }
        Err(e) => return Err(e.into()),
    };
    let resource_id = req.resource_id.clone();
    let shared = siblings(&identities, &resource_id, None);
    let mut changes = Vec::new();

    // The role assignment: the kubelet identity needs Managed Identity Operator on it.
    let mut role = shared
        .iter()
        .find_map(|i| role_assignment(i))
        .map(str::to_owned);
    let mut grant = None;
    if !req.no_role_assignment {
        let kubelet = match (&req.kubelet_object_id, &req.aks_cluster_id) {
            (Some(o), _) => o.clone(),
            (None, Some(c)) => match azure.arm.aks_kubelet_object_id(c).await {
                Ok(Some(o)) => o,
                Ok(None) => {
                    return Err(usage(
                        "--aks-cluster-id",
                        format!(
                            "cluster {c} reports no kubelet identity; pass --kubelet-object-id"
                        ),
                    ));
                }
                Err(e) if arm_not_found(&e) => {
                    return Err(usage("--aks-cluster-id", format!("cluster {c} not found")));
                }
                Err(e) => return Err(e.into()),
            },
            (None, None) => unreachable!("validated"),
        };
        let existing = azure.arm.role_assignments(&resource_id, &kubelet).await?;
        if existing
            .iter()
            .any(|a| a.grants(MANAGED_IDENTITY_OPERATOR_ROLE, &kubelet))
        {
            changes.push(Change::new(
                "keep",
                "RoleAssignment",
                "Managed Identity Operator",
                format!("kubelet identity {kubelet} already holds it on the identity"),
            ));
        } else {
            grant = Some(kubelet);
        }
    }

    // The node pools.
    let pools = node_pool_targets(&nodes);
    let mut preexisting: BTreeSet<String> =
        shared.iter().flat_map(|i| preexisting_targets(i)).collect();
    let mut assigned: BTreeSet<String> = shared.iter().flat_map(|i| assigned_targets(i)).collect();
    let mut assign = Vec::new();
    if !req.no_assign {
        for t in &pools {
            let current = azure.arm.identities(t).await?;
            let has = current
                .user_assigned
                .contains(&resource_id.to_ascii_lowercase());
            if has {
                if shared.is_empty() {
                    preexisting.insert(t.arm_id().to_ascii_lowercase());
                }
                changes.push(Change::new(
                    "keep",
                    "Assignment",
                    t.name.clone(),
                    "already carries the identity",
                ));
            } else {
                assigned.insert(t.arm_id().to_ascii_lowercase());
                assign.push((t.clone(), current));
            }
        }
    }

    // The writes.
    if let Some(kubelet) = &grant {
        let detail = format!("Managed Identity Operator for the kubelet identity {kubelet}");
        if !req.dry_run {
            let a = azure
                .arm
                .create_role_assignment(
                    &resource_id,
                    &role_definition_id(&azure.subscription_id, MANAGED_IDENTITY_OPERATOR_ROLE),
                    kubelet,
                )
                .await?;
            role = Some(a.id);
        }
        changes.push(Change::new(
            "grant",
            "RoleAssignment",
            role.clone().unwrap_or_else(|| "(new)".into()),
            detail,
        ));
    }
    let objects = add_objects(
        ns,
        name,
        &resource_id,
        &identity.client_id,
        req.selector.as_deref(),
        &preexisting,
        &assigned,
        role.as_deref(),
    );
    ids.create(&post(req.dry_run), &objects.identity).await?;
    changes.push(Change::new(
        "create",
        "AzureIdentity",
        format!("{ns}/{name}"),
        format!("client ID {}", identity.client_id),
    ));
    binds.create(&post(req.dry_run), &objects.binding).await?;
    changes.push(Change::new(
        "create",
        "AzureIdentityBinding",
        format!("{ns}/{}", binding_name(name)),
        format!("selector {}", objects.binding.spec.selector),
    ));
    for (t, current) in &assign {
        if !req.dry_run {
            azure
                .arm
                .update_from(t, current, std::slice::from_ref(&resource_id), &[])
                .await?;
        }
        changes.push(Change::new(
            "assign",
            "ScaleSet",
            t.name.clone(),
            resource_id.clone(),
        ));
    }
    Ok(changes)
}

/// How long `podid identity delete` waits for podid-operator to release an AzureIdentity it holds
/// before revoking the role assignment.
pub const OPERATOR_RELEASE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// `podid identity delete`. When podid-operator `--mode managed` holds the AzureIdentity (its
/// finalizer), the operator takes the identity off the node pools; the role assignment is
/// revoked once the AzureIdentity is gone.
pub async fn run_delete(
    client: &Client,
    azure: Option<&Azure>,
    namespace: &str,
    name: &str,
    dry_run: bool,
) -> Result<Vec<Change>, Error> {
    check_label("--namespace", namespace, MAX_LABEL_LEN)?;
    check_label("--name", name, MAX_LABEL_LEN)?;
    let ids: Api<AzureIdentity> = Api::namespaced(client.clone(), namespace);
    let Some(target) = ids.get_opt(name).await? else {
        return Err(usage(
            "--name",
            format!("pod identity {namespace}/{name} not found"),
        ));
    };
    if !is_managed(&target) {
        return Err(Error::Refused(format!(
            "AzureIdentity {namespace}/{name} was not created by `podid identity add` (no {MANAGED_IDENTITY_ANNOTATION} annotation): podid leaves it alone; delete it with kubectl"
        )));
    }
    let identities: Vec<AzureIdentity> = list_all(client).await?;
    let bindings: Vec<AzureIdentityBinding> = list_all(client).await?;
    let nodes: Vec<Node> = list_all(client).await?;
    let pools = node_pool_targets(&nodes);
    let mut plan = plan_delete(&target, &identities, &bindings, &pools);
    // podid-operator `--mode managed` holds the AzureIdentity with its finalizer: it owns the
    // node pools' assignment and takes the identity off them before letting the object go.
    let operator_owned = has_finalizer(&target);
    let by_operator = std::mem::take(&mut plan.unassign);
    if !operator_owned {
        plan.unassign = by_operator.clone();
    }
    let needs_azure = !plan.unassign.is_empty() || plan.role_assignment.is_some();
    let azure = match (azure, needs_azure) {
        (Some(a), _) => Some(a),
        (None, false) => None,
        (None, true) => {
            return Err(Error::Usage(
                "deleting the last pod identity of an Azure identity takes it off the node pools and revokes its role assignment: Azure is needed (--cloud-config FILE, or --azure-tenant-id, --azure-subscription-id, --azure-client-id and AZURE_CLIENT_SECRET)".into(),
            ));
        }
    };
    let rid = target.spec.resource_id.clone();
    // Read the targets before any write.
    let mut unassign = Vec::new();
    if let Some(azure) = azure {
        for t in &plan.unassign {
            let current = match azure.arm.identities(t).await {
                Ok(c) => c,
                // A recorded pool that is gone carries nothing.
                Err(e) if arm_not_found(&e) => continue,
                Err(e) => return Err(e.into()),
            };
            if current.user_assigned.contains(&rid.to_ascii_lowercase()) {
                unassign.push((t.clone(), current));
            }
        }
    }
    let mut changes = Vec::new();
    let binds: Api<AzureIdentityBinding> = Api::namespaced(client.clone(), namespace);
    let dp = DeleteParams {
        dry_run,
        ..Default::default()
    };
    for b in &plan.bindings {
        binds.delete(b, &dp).await?;
        changes.push(Change::new(
            "delete",
            "AzureIdentityBinding",
            format!("{namespace}/{b}"),
            "",
        ));
    }
    ids.delete(name, &dp).await?;
    changes.push(Change::new(
        "delete",
        "AzureIdentity",
        format!("{namespace}/{name}"),
        "",
    ));
    let others = siblings(&identities, &rid, Some((namespace, name)));
    if !others.is_empty() {
        let names: Vec<String> = others
            .iter()
            .map(|i| {
                format!(
                    "{}/{}",
                    i.metadata.namespace.as_deref().unwrap_or_default(),
                    i.metadata.name.as_deref().unwrap_or_default()
                )
            })
            .collect();
        changes.push(Change::new(
            "keep",
            "Assignment",
            "node pools",
            format!("still needed by {}", names.join(", ")),
        ));
    }
    if operator_owned && !by_operator.is_empty() {
        changes.push(Change::new(
            "unassign",
            "ScaleSet",
            "node pools",
            "by podid-operator (--mode managed) before the AzureIdentity goes",
        ));
    }
    if operator_owned && plan.role_assignment.is_some() && !dry_run {
        // The role assignment goes once the operator has taken the identity off the pools.
        let gone = async {
            while ids.get_opt(name).await?.is_some() {
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
            Ok::<_, Error>(())
        };
        match tokio::time::timeout(OPERATOR_RELEASE_TIMEOUT, gone).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(Error::Refused(format!(
                    "AzureIdentity {namespace}/{name} is deleted but podid-operator has not released it within {}s (is it running with --mode managed?): the role assignment {} is kept; revoke it once the AzureIdentity is gone",
                    OPERATOR_RELEASE_TIMEOUT.as_secs(),
                    plan.role_assignment.as_deref().unwrap_or_default()
                )));
            }
        }
    }
    if let Some(azure) = azure {
        for (t, current) in &unassign {
            if !dry_run {
                azure
                    .arm
                    .update_from(t, current, &[], std::slice::from_ref(&rid))
                    .await?;
            }
            changes.push(Change::new(
                "unassign",
                "ScaleSet",
                t.name.clone(),
                rid.clone(),
            ));
        }
        for kept in preexisting_targets(&target) {
            changes.push(Change::new(
                "keep",
                "Assignment",
                kept,
                "was there before podid",
            ));
        }
        if let Some(r) = &plan.role_assignment {
            if !dry_run {
                azure.arm.delete_role_assignment(r).await?;
            }
            changes.push(Change::new(
                "revoke",
                "RoleAssignment",
                r.clone(),
                "Managed Identity Operator",
            ));
        }
    }
    Ok(changes)
}

/// One row of `podid identity list`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct IdentityRow {
    pub namespace: String,
    pub name: String,
    pub client_id: String,
    pub resource_id: String,
    pub selectors: Vec<String>,
    /// Pods in the identity's namespace labelled with one of its selectors now.
    pub pods: usize,
    /// Node-pool scale sets (or VMs) carrying the identity; `None` without Azure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub assigned: Option<Vec<String>>,
    /// Created by `podid identity add`.
    pub managed: bool,
    /// The bridge's records that use it: `kind/name stage`.
    pub migration: Vec<String>,
}

/// The rows of `podid identity list` from what was read (pure).
pub fn identity_rows(
    identities: &[AzureIdentity],
    bindings: &[AzureIdentityBinding],
    pods: &[Pod],
    records: &[podid_crds::migration::WorkloadMigration],
    assigned: Option<&BTreeMap<String, Vec<String>>>,
) -> Vec<IdentityRow> {
    let mut rows: Vec<IdentityRow> = identities
        .iter()
        .map(|i| {
            let ns = i.metadata.namespace.clone().unwrap_or_default();
            let name = i.metadata.name.clone().unwrap_or_default();
            let selectors: BTreeSet<String> = bindings
                .iter()
                .filter(|b| {
                    b.metadata.namespace.as_deref() == Some(ns.as_str())
                        && b.spec.azure_identity == name
                })
                .map(|b| b.spec.selector.clone())
                .collect();
            let pods = pods
                .iter()
                .filter(|p| p.metadata.namespace.as_deref() == Some(ns.as_str()))
                .filter(|p| {
                    p.metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get(POD_LABEL))
                        .is_some_and(|v| selectors.contains(v))
                })
                .count();
            // The bridge names the identity `<namespace>/<name>`; the workload may live in
            // another namespace (a binding that is not namespaced), which is then shown.
            let full = format!("{ns}/{name}");
            let migration = records
                .iter()
                .filter_map(|r| {
                    let status = r.status.as_ref()?;
                    status
                        .identities
                        .iter()
                        .any(|m| m.azure_identity == full)
                        .then(|| {
                            let stage = status
                                .stage
                                .or(r.spec.stage)
                                .map_or("Recorded", podid_crds::migration::Stage::as_str);
                            let workload_ns = match r.metadata.namespace.as_deref() {
                                Some(w) if w != ns => format!("{w}/"),
                                _ => String::new(),
                            };
                            format!(
                                "{workload_ns}{}/{} {stage}",
                                r.spec.workload.kind.to_ascii_lowercase(),
                                r.spec.workload.name
                            )
                        })
                })
                .collect();
            IdentityRow {
                assigned: assigned.map(|a| {
                    a.get(&i.spec.resource_id.to_ascii_lowercase())
                        .cloned()
                        .unwrap_or_default()
                }),
                managed: is_managed(i),
                client_id: i.spec.client_id.clone(),
                resource_id: i.spec.resource_id.clone(),
                selectors: selectors.into_iter().collect(),
                pods,
                migration,
                namespace: ns,
                name,
            }
        })
        .collect();
    rows.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    rows
}

fn dash(v: &[String]) -> String {
    if v.is_empty() {
        "-".into()
    } else {
        v.join(",")
    }
}

/// `podid identity list`'s table.
pub fn render_identities(rows: &[IdentityRow], output: Output) -> Result<String, Error> {
    render_rows(
        rows,
        output,
        &[
            "NAMESPACE",
            "NAME",
            "CLIENT ID",
            "SELECTOR",
            "PODS",
            "ASSIGNED",
            "MANAGED",
            "MIGRATION",
        ],
        |r| {
            vec![
                r.namespace.clone(),
                r.name.clone(),
                r.client_id.clone(),
                dash(&r.selectors),
                r.pods.to_string(),
                r.assigned.as_deref().map_or("?".into(), dash),
                if r.managed { "yes" } else { "no" }.into(),
                dash(&r.migration),
            ]
        },
    )
}

/// `podid identity list`: in `namespace`, or every namespace.
pub async fn run_list(
    client: &Client,
    azure: Option<&Azure>,
    namespace: Option<&str>,
) -> Result<Vec<IdentityRow>, Error> {
    if let Some(ns) = namespace {
        check_label("--namespace", ns, MAX_LABEL_LEN)?;
    }
    let in_scope = |o: &Option<String>| namespace.is_none_or(|n| o.as_deref() == Some(n));
    let identities: Vec<AzureIdentity> = list_all::<AzureIdentity>(client)
        .await?
        .into_iter()
        .filter(|i| in_scope(&i.metadata.namespace))
        .collect();
    let bindings: Vec<AzureIdentityBinding> = list_all(client).await?;
    let pods: Vec<Pod> = Api::<Pod>::all(client.clone())
        .list(&ListParams::default().labels(POD_LABEL))
        .await?
        .items;
    let records = match list_all::<podid_crds::migration::WorkloadMigration>(client).await {
        Ok(r) => r,
        Err(Error::Kube(kube::Error::Api(e))) if e.code == 404 => Vec::new(),
        Err(e) => return Err(e),
    };
    let assigned = match azure {
        None => None,
        Some(azure) => {
            let nodes: Vec<Node> = list_all(client).await?;
            let mut by_identity: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for t in node_pool_targets(&nodes) {
                for id in azure.arm.identities(&t).await?.user_assigned {
                    by_identity.entry(id).or_default().push(t.name.clone());
                }
            }
            Some(by_identity)
        }
    };
    Ok(identity_rows(
        &identities,
        &bindings,
        &pods,
        &records,
        assigned.as_ref(),
    ))
}

/// One row of `podid exception list`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExceptionRow {
    pub namespace: String,
    pub name: String,
    pub pod_labels: BTreeMap<String, String>,
}

/// `podid exception list`.
pub async fn run_exception_list(
    client: &Client,
    namespace: Option<&str>,
) -> Result<Vec<ExceptionRow>, Error> {
    if let Some(ns) = namespace {
        check_label("--namespace", ns, MAX_LABEL_LEN)?;
    }
    let mut rows: Vec<ExceptionRow> = list_all::<AzurePodIdentityException>(client)
        .await?
        .into_iter()
        .filter(|e| namespace.is_none_or(|n| e.metadata.namespace.as_deref() == Some(n)))
        .map(|e| ExceptionRow {
            namespace: e.metadata.namespace.unwrap_or_default(),
            name: e.metadata.name.unwrap_or_default(),
            pod_labels: e.spec.pod_labels,
        })
        .collect();
    rows.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    Ok(rows)
}

/// `podid exception list`'s table.
pub fn render_exceptions(rows: &[ExceptionRow], output: Output) -> Result<String, Error> {
    render_rows(rows, output, &["NAMESPACE", "NAME", "POD LABELS"], |r| {
        vec![
            r.namespace.clone(),
            r.name.clone(),
            r.pod_labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(","),
        ]
    })
}

/// The AzurePodIdentityException `podid exception add|update` writes.
pub fn exception_object(
    namespace: &str,
    name: &str,
    labels: BTreeMap<String, String>,
) -> AzurePodIdentityException {
    AzurePodIdentityException {
        metadata: kube::api::ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
            ..Default::default()
        },
        spec: AzurePodIdentityExceptionSpec {
            pod_labels: labels,
            ..Default::default()
        },
        status: None,
    }
}

/// What `podid exception` does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExceptionVerb {
    Add,
    Update,
    Delete,
}

/// `podid exception add|update|delete`.
pub async fn run_exception(
    client: &Client,
    verb: ExceptionVerb,
    namespace: &str,
    name: &str,
    pod_labels: &[String],
    dry_run: bool,
) -> Result<Vec<Change>, Error> {
    check_label("--namespace", namespace, MAX_LABEL_LEN)?;
    check_label("--name", name, MAX_LABEL_LEN)?;
    let labels = match verb {
        ExceptionVerb::Delete => BTreeMap::new(),
        _ => parse_pod_labels(pod_labels)?,
    };
    let api: Api<AzurePodIdentityException> = Api::namespaced(client.clone(), namespace);
    let existing = api.get_opt(name).await?;
    let full = format!("{namespace}/{name}");
    let describe = |l: &BTreeMap<String, String>| {
        l.iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    };
    match (verb, existing) {
        (ExceptionVerb::Add, Some(_)) => Err(usage(
            "--name",
            format!(
                "pod identity exception {full} already exists (change it with `podid exception update`)"
            ),
        )),
        (ExceptionVerb::Add, None) => {
            let detail = describe(&labels);
            api.create(&post(dry_run), &exception_object(namespace, name, labels))
                .await?;
            Ok(vec![Change::new(
                "create",
                "AzurePodIdentityException",
                full,
                detail,
            )])
        }
        (ExceptionVerb::Update | ExceptionVerb::Delete, None) => Err(usage(
            "--name",
            format!("pod identity exception {full} not found"),
        )),
        (ExceptionVerb::Update, Some(mut e)) => {
            let detail = format!("{} -> {}", describe(&e.spec.pod_labels), describe(&labels));
            e.spec.pod_labels = labels;
            api.replace(name, &post(dry_run), &e).await?;
            Ok(vec![Change::new(
                "update",
                "AzurePodIdentityException",
                full,
                detail,
            )])
        }
        (ExceptionVerb::Delete, Some(_)) => {
            api.delete(
                name,
                &DeleteParams {
                    dry_run,
                    ..Default::default()
                },
            )
            .await?;
            Ok(vec![Change::new(
                "delete",
                "AzurePodIdentityException",
                full,
                "",
            )])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(labels: &[(&str, &str)], provider: &str) -> Node {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "n", "labels": labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>()},
            "spec": {"providerID": provider}
        }))
        .unwrap()
    }

    const RID: &str = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/app";

    #[test]
    fn names_follow_rfc_1123_and_leave_room_for_the_binding() {
        assert!(check_identity_name("payments-id").is_ok());
        for bad in ["", "Payments", "-a", "a-", "a_b", "a.b", &"a".repeat(56)] {
            let e = check_identity_name(bad).unwrap_err().to_string();
            assert!(e.starts_with("--name"), "{bad}: {e}");
        }
        assert!(check_identity_name(&"a".repeat(55)).is_ok());
        assert_eq!(binding_name(&"a".repeat(55)).len(), 63);
        assert!(check_label("--namespace", &"n".repeat(63), MAX_LABEL_LEN).is_ok());
        assert!(check_label("--namespace", &"n".repeat(64), MAX_LABEL_LEN).is_err());
    }

    #[test]
    fn selectors_are_label_values() {
        for ok in ["web", "Web_1.x", "a"] {
            assert!(check_label_value("--binding-selector", ok).is_ok(), "{ok}");
        }
        for bad in ["", "-web", "web ", "a/b", &"x".repeat(64)] {
            let e = check_label_value("--binding-selector", bad).unwrap_err();
            assert!(e.to_string().starts_with("--binding-selector"), "{bad}");
        }
    }

    #[test]
    fn pod_labels_parse_as_the_add_on_takes_them() {
        let l = parse_pod_labels(&["app=web,tier=front".into(), "example.com/x=1".into()]).unwrap();
        assert_eq!(l.len(), 3);
        assert_eq!(l["example.com/x"], "1");
        for bad in ["app", "=web", "app=web,app=api", "bad key=1", "app=-x", ""] {
            let e = parse_pod_labels(&[bad.into()]).unwrap_err().to_string();
            assert!(e.starts_with("--pod-labels"), "{bad}: {e}");
        }
    }

    #[test]
    fn resource_ids_and_object_ids() {
        assert!(check_identity_resource_id(RID).is_ok());
        for bad in [
            "app",
            "/subscriptions/s/resourceGroups/rg",
            "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm",
        ] {
            assert!(
                check_identity_resource_id(bad)
                    .unwrap_err()
                    .to_string()
                    .starts_with("--identity-resource-id")
            );
        }
        assert!(
            check_guid(
                "--kubelet-object-id",
                "0f6c1a2b-0000-4000-8000-00000000abcd"
            )
            .is_ok()
        );
        assert!(check_guid("--kubelet-object-id", "not-a-guid").is_err());
    }

    #[test]
    fn a_request_needs_the_kubelet_identity_unless_told_not_to_grant() {
        let mut r = AddRequest {
            namespace: "apps".into(),
            name: "app".into(),
            resource_id: RID.into(),
            ..Default::default()
        };
        assert!(
            r.validate()
                .unwrap_err()
                .to_string()
                .contains("--kubelet-object-id")
        );
        r.no_role_assignment = true;
        assert!(r.validate().is_ok());
        r.aks_cluster_id = Some("/subscriptions/s/resourceGroups/rg".into());
        assert!(
            r.validate()
                .unwrap_err()
                .to_string()
                .starts_with("--aks-cluster-id")
        );
    }

    #[test]
    fn kubenet_and_node_pools_come_from_the_nodes() {
        let vmss = |pool: &str, i: u32| {
            format!(
                "azure:///subscriptions/s/resourceGroups/MC_rg/providers/Microsoft.Compute/virtualMachineScaleSets/{pool}/virtualMachines/{i}"
            )
        };
        let nodes = [
            node(
                &[(AKS_NETWORK_PLUGIN_LABEL, "azure")],
                &vmss("aks-a-vmss", 0),
            ),
            node(&[], &vmss("aks-a-vmss", 1)),
            node(&[], &vmss("aks-b-vmss", 0)),
            node(&[], "kind://docker/x"),
        ];
        assert!(!is_kubenet(&nodes));
        let t: Vec<String> = node_pool_targets(&nodes)
            .into_iter()
            .map(|t| t.name)
            .collect();
        assert_eq!(t, ["aks-a-vmss", "aks-b-vmss"]);
        assert!(is_kubenet(&[node(
            &[(AKS_NETWORK_PLUGIN_LABEL, "kubenet")],
            ""
        )]));
    }

    fn managed(ns: &str, name: &str, rid: &str, pre: &[&str], role: Option<&str>) -> AzureIdentity {
        add_objects(
            ns,
            name,
            rid,
            "c",
            None,
            &pre.iter().map(|s| s.to_string()).collect(),
            &BTreeSet::new(),
            role,
        )
        .identity
    }

    #[test]
    fn add_creates_the_add_on_s_objects() {
        let o = add_objects(
            "apps",
            "app",
            RID,
            "cid",
            None,
            &BTreeSet::new(),
            &BTreeSet::new(),
            None,
        );
        assert_eq!(o.binding.metadata.name.as_deref(), Some("app-binding"));
        assert_eq!(
            o.binding.spec.selector, "app",
            "the selector defaults to the name"
        );
        assert_eq!(o.binding.spec.azure_identity, "app");
        assert_eq!(o.identity.spec.client_id, "cid");
        assert!(is_managed(&o.identity));
        let o = add_objects(
            "apps",
            "app",
            RID,
            "cid",
            Some("shared"),
            &BTreeSet::new(),
            &BTreeSet::from(["/subscriptions/s/resourcegroups/mc_rg/providers/microsoft.compute/virtualmachinescalesets/one".to_owned()]),
            Some("/ra"),
        );
        assert_eq!(assigned_targets(&o.identity).len(), 1);
        assert_eq!(o.binding.spec.selector, "shared");
        assert_eq!(role_assignment(&o.identity), Some("/ra"));
    }

    #[test]
    fn delete_keeps_what_another_identity_or_someone_else_needs() {
        let pool = |n: &str| AssignmentTarget {
            subscription: "s".into(),
            resource_group: "MC_rg".into(),
            name: n.into(),
            is_scale_set: true,
        };
        let pools: BTreeSet<_> = [pool("a"), pool("b")].into();
        let pre = pool("b").arm_id().to_ascii_lowercase();
        let target = managed("apps", "app", RID, &[&pre], Some("/ra"));
        let binding = add_objects(
            "apps",
            "app",
            RID,
            "c",
            None,
            &BTreeSet::new(),
            &BTreeSet::new(),
            None,
        )
        .binding;
        let foreign = podid_testkit_free_binding("apps", "hand-made", "app");
        let plan = plan_delete(
            &target,
            std::slice::from_ref(&target),
            &[binding.clone(), foreign],
            &pools,
        );
        assert_eq!(plan.bindings, ["app-binding"], "only podid's binding");
        assert_eq!(
            plan.unassign,
            [pool("a")],
            "the pre-existing assignment stays"
        );
        assert_eq!(plan.role_assignment.as_deref(), Some("/ra"));

        // Another managed AzureIdentity of the same Azure identity (ids compare case-insensitively).
        let other = managed(
            "other",
            "app",
            &RID.to_ascii_lowercase(),
            &[&pre],
            Some("/ra"),
        );
        let plan = plan_delete(&target, &[target.clone(), other], &[binding], &pools);
        assert!(plan.unassign.is_empty());
        assert_eq!(plan.role_assignment, None);
    }

    #[test]
    fn delete_takes_the_identity_off_recorded_pools_without_nodes() {
        let pool = |n: &str| AssignmentTarget {
            subscription: "s".into(),
            resource_group: "MC_rg".into(),
            name: n.into(),
            is_scale_set: true,
        };
        let lower = |t: AssignmentTarget| t.arm_id().to_ascii_lowercase();
        let target = add_objects(
            "apps",
            "app",
            RID,
            "c",
            None,
            &BTreeSet::from([lower(pool("pre"))]),
            &BTreeSet::from([lower(pool("a")), lower(pool("zero"))]),
            None,
        )
        .identity;
        // Pool "zero" was scaled to zero: no node names it, the annotation does.
        let plan = plan_delete(
            &target,
            std::slice::from_ref(&target),
            &[],
            &[pool("a"), pool("pre")].into(),
        );
        let names: Vec<&str> = plan.unassign.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["a", "zero"], "each once, the pre-existing one kept");
        // No node at all.
        let plan = plan_delete(
            &target,
            std::slice::from_ref(&target),
            &[],
            &BTreeSet::new(),
        );
        let ids: Vec<String> = plan.unassign.into_iter().map(lower).collect();
        assert_eq!(ids, [lower(pool("a")), lower(pool("zero"))]);
    }

    fn podid_testkit_free_binding(ns: &str, name: &str, identity: &str) -> AzureIdentityBinding {
        AzureIdentityBinding {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                namespace: Some(ns.into()),
                ..Default::default()
            },
            spec: AzureIdentityBindingSpec {
                azure_identity: identity.into(),
                selector: "x".into(),
                ..Default::default()
            },
            status: None,
        }
    }

    #[test]
    fn rows_count_bound_pods_and_render() {
        let i = managed("apps", "app", RID, &[], None);
        let b = add_objects(
            "apps",
            "app",
            RID,
            "c",
            Some("web"),
            &BTreeSet::new(),
            &BTreeSet::new(),
            None,
        )
        .binding;
        let pod = |ns: &str, label: &str| -> Pod {
            serde_json::from_value(serde_json::json!({"metadata": {"name": "p", "namespace": ns, "labels": {POD_LABEL: label}}})).unwrap()
        };
        let pods = [
            pod("apps", "web"),
            pod("apps", "web"),
            pod("apps", "api"),
            pod("other", "web"),
        ];
        // The bridge's records name the AzureIdentity `<namespace>/<name>`.
        let record = |ns: &str, workload: &str, identity: &str, stage: Option<&str>| {
            serde_json::from_value::<podid_crds::migration::WorkloadMigration>(serde_json::json!({
                "metadata": {"name": format!("deployment-{workload}"), "namespace": ns},
                "spec": {"workload": {"kind": "Deployment", "name": workload}},
                "status": {
                    "identities": [{"azureIdentity": identity, "clientID": "c"}],
                    "stage": stage,
                },
            }))
            .unwrap()
        };
        let records = [
            record("apps", "web", "apps/app", Some("Bridged")),
            record("apps", "api", "apps/other", Some("Switched")),
            record("other", "batch", "apps/app", None),
            record("other", "cron", "other/app", Some("Completed")),
        ];
        let rows = identity_rows(&[i], &[b], &pods, &records, None);
        assert_eq!(rows[0].pods, 2);
        assert_eq!(rows[0].selectors, ["web"]);
        assert_eq!(
            rows[0].migration,
            ["deployment/web Bridged", "other/deployment/batch Recorded"]
        );
        let table = render_identities(&rows, Output::Table).unwrap();
        assert!(table.starts_with("NAMESPACE"), "{table}");
        let header: Vec<&str> = table.lines().next().unwrap().split("   ").collect();
        assert_eq!(
            header.last().map(|h| h.trim()),
            Some("MIGRATION"),
            "{table}"
        );
        let row = table.lines().nth(1).unwrap();
        assert!(row.starts_with("apps"), "{table}");
        assert!(
            row.ends_with("deployment/web Bridged,other/deployment/batch Recorded"),
            "{table}"
        );
        let json: serde_json::Value =
            serde_json::from_str(&render_identities(&rows, Output::Json).unwrap()).unwrap();
        assert_eq!(json[0]["pods"], 2);
        assert_eq!(json[0]["migration"][0], "deployment/web Bridged");
    }
}
