//! Every annotation, label, finalizer and well-known name podid reads or writes, whoever defined
//! it: pod identity's (shared with the original MIC and NMI), podid's own, Workload ID's and the
//! podid bridge's. One home, so the operator, the node agent and the CLI spell each the same way.

// Pod identity (aad-pod-identity v1.8.17).

/// The API group of every pod-identity resource.
pub const GROUP: &str = "aadpodidentity.k8s.io";
/// The only served and stored version.
pub const VERSION: &str = "v1";
/// Pod label whose value is matched against `AzureIdentityBinding.spec.selector`.
pub const POD_LABEL: &str = "aadpodidbinding";
/// Annotation on an AzureIdentity that makes it namespaced (identity, binding and pod must share
/// a namespace). The value must be `namespaced`.
pub const BEHAVIOR_ANNOTATION: &str = "aadpodidentity.k8s.io/Behavior";
/// Value of [`BEHAVIOR_ANNOTATION`] that marks an identity namespaced.
pub const BEHAVIOR_NAMESPACED: &str = "namespaced";
/// Finalizer the MIC puts on every AzureAssignedIdentity it creates.
pub const ASSIGNED_IDENTITY_FINALIZER: &str =
    "azureassignedidentity.finalizers.aadpodidentity.k8s.io";
/// Label carrying the node name on AzureAssignedIdentities (the node agent watches by it).
pub const NODENAME_LABEL: &str = "nodename";

// podid's own, on AzureAssignedIdentities.

/// Annotation (value `"true"`) on an AzureAssignedIdentity whose identity was already on the
/// scale set or VM before podid assigned it: podid never removes such an identity.
pub const PREEXISTING_ANNOTATION: &str = "podid.dev/preexisting-assignment";
/// Annotation holding the ARM id of the scale set or VM the identity was assigned to, so the
/// assignment can be undone after the node is gone.
pub const TARGET_ANNOTATION: &str = "podid.dev/assignment-target";

/// Annotation on an AzureIdentityBinding choosing how its identity is served: `assigned`,
/// `federated` or `federated-with-fallback` (see [`crate::serving`]). podid-operator writes the
/// same annotation on each AzureAssignedIdentity it keeps, saying how it served that pod.
pub const SERVING_ANNOTATION: &str = "podid.dev/identity-serving";

// podid's own, on AzureIdentities that `podid identity add` manages (the AKS add-on's flows).

/// Annotation (value `"true"`) on an AzureIdentity created by `podid identity add`: podid keeps
/// its identity assigned to every node-pool scale set of the cluster (podid-operator
/// `--mode managed`), and removes it from them when the AzureIdentity goes.
pub const MANAGED_IDENTITY_ANNOTATION: &str = "podid.dev/managed-identity";
/// Annotation on such an AzureIdentity: comma-separated lower-cased ARM ids of the scale sets
/// and VMs that already carried its identity before podid assigned it (never removed from
/// those).
pub const PREEXISTING_TARGETS_ANNOTATION: &str = "podid.dev/preexisting-targets";
/// Annotation on such an AzureIdentity: comma-separated lower-cased ARM ids of the scale sets
/// and VMs podid assigned its identity to (written before each assignment, by `podid identity
/// add` and by podid-operator `--mode managed`): exactly these are taken off when the last
/// AzureIdentity of that identity goes.
pub const ASSIGNED_TARGETS_ANNOTATION: &str = "podid.dev/assigned-targets";
/// Finalizer podid-operator `--mode managed` puts on each AzureIdentity it keeps on the node
/// pools, before assigning it anywhere: the AzureIdentity goes only once podid has taken its
/// identity off the scale sets it put it on.
pub const MANAGED_IDENTITY_FINALIZER: &str = "podid.dev/node-pool-assignment";
/// Annotation on such an AzureIdentity: the ARM id of the role assignment ("Managed Identity
/// Operator" for the kubelet identity) podid created for it, deleted with the last AzureIdentity
/// of that identity.
pub const ROLE_ASSIGNMENT_ANNOTATION: &str = "podid.dev/role-assignment";

// The podid bridge's, on ServiceAccounts.

/// Annotation the podid bridge writes on a ServiceAccount: comma-separated client IDs whose
/// federated credential for this ServiceAccount exists.
pub const BRIDGE_CREDENTIALS_ANNOTATION: &str = "podid.dev/federated-credentials";

/// Pod-template annotation naming, for a workload with several identities, the one its
/// ServiceAccount's `azure.workload.identity/client-id` should name (a client ID or an
/// AzureIdentity name).
pub const DEFAULT_IDENTITY_ANNOTATION: &str = "podid.dev/default-identity";

// Workload ID's.

/// Workload ID's ServiceAccount annotation naming the identity's client ID.
pub const WI_CLIENT_ID_ANNOTATION: &str = "azure.workload.identity/client-id";
/// Workload ID's ServiceAccount annotation naming the identity's Entra tenant.
pub const WI_TENANT_ID_ANNOTATION: &str = "azure.workload.identity/tenant-id";
/// Workload ID's pod label that makes the webhook inject token and environment.
pub const WI_USE_LABEL: &str = "azure.workload.identity/use";
/// Name of the Workload ID mutating webhook.
pub const WI_WEBHOOK_NAME: &str = "mutation.azure-workload-identity.io";

// AKS's.

/// Node label AKS sets to the cluster's network plugin (`kubenet`, `azure`, ...).
pub const AKS_NETWORK_PLUGIN_LABEL: &str = "kubernetes.azure.com/network-plugin";
