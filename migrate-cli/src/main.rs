//! `podid` (also `kubectl podid`): report which workloads can move from pod identity to
//! Workload ID, and write cluster snapshots.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use podid_cli::cutover::{
    Action, CutoverPlan, Scope as CutoverScope, build_plan, build_status, kustomize_patch,
    outcome_table, patch_file_name, plan_table, status_table, status_troubled,
};
use podid_cli::cutover_run::{
    Exchange, Outcome, RunOptions, check_webhook, delete_bindings, finalize, prepare,
    prepare_direct, remove_workload_id_side, rollback, switch, verify,
};
use podid_cli::inventory::{ContextFromInventory, Inventory};
use podid_cli::live::{Scope, scan};
use podid_cli::render::{Format, render};
use podid_cli::report::Report;
use podid_cli::selector::LabelSelector;
use podid_crds::cutover::HoldCode;
use podid_crds::migration::Stage;
use podid_crds::plan::ClusterContext;
use podid_crds::policy::MatchOptions;

/// Exit code when the report lists at least one blocked workload.
const EXIT_BLOCKED: u8 = 3;
/// Exit code for usage errors (clap uses the same).
const EXIT_USAGE: u8 = 2;

#[derive(Parser)]
#[command(
    name = "podid",
    version,
    about = "Move workloads from Azure pod identity to Workload ID"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log filter (e.g. debug); logs go to stderr.
    #[arg(long, global = true, env = "PODID_LOG", default_value = "warn")]
    log: String,
}

#[derive(clap::Args)]
struct Source {
    /// kubeconfig context to use (default: the current one). `report` and `snapshot` take
    /// several (repeatable): one report over the fleet.
    #[arg(long = "context", value_name = "NAME")]
    contexts: Vec<String>,
    /// Every context of the kubeconfig (`report`, `snapshot`).
    #[arg(long, conflicts_with = "contexts")]
    all_contexts: bool,
    /// Namespace to report on (repeatable). Bindings and identities are still read cluster-wide.
    #[arg(short = 'n', long = "namespace")]
    namespaces: Vec<String>,
    /// All namespaces (the default when no -n is given).
    #[arg(short = 'A', long, conflicts_with = "namespaces")]
    all_namespaces: bool,
    /// Label selector (`kubectl -l` syntax): list only workloads whose pod template (a bare
    /// pod's own labels) matches. Ignored by `snapshot`, which records everything in scope.
    #[arg(short = 'l', long)]
    selector: Option<String>,
    /// No progress bar.
    #[arg(short, long)]
    quiet: bool,
    /// The cluster's OIDC issuer URL (AKS: `az aks show --query oidcIssuerProfile.issuerUrl`),
    /// overriding what the API server announces or the snapshot records. With several
    /// clusters, `CLUSTER=URL` for each (repeatable).
    #[arg(long = "oidc-issuer", value_name = "[CLUSTER=]URL")]
    oidc_issuers: Vec<String>,
}

impl Source {
    /// The flags' values, checked before anything is read: namespaces, the selector, the
    /// issuers, the contexts.
    fn check(&self) -> anyhow::Result<Option<LabelSelector>> {
        for ns in &self.namespaces {
            podid_cli::identity::check_label(
                "--namespace",
                ns,
                podid_cli::identity::MAX_LABEL_LEN,
            )?;
        }
        for value in &self.oidc_issuers {
            check_issuer(value)?;
        }
        for context in &self.contexts {
            check_context(context)?;
        }
        Ok(self
            .selector
            .as_deref()
            .map(LabelSelector::parse)
            .transpose()?)
    }

    /// The one context of a command that works on one cluster (`cutover`).
    fn single_context(&self) -> anyhow::Result<Option<&String>> {
        if self.all_contexts || self.contexts.len() > 1 {
            return Err(podid_cli::Error::Usage(
                "podid cutover works on one cluster at a time: pass at most one --context".into(),
            )
            .into());
        }
        Ok(self.contexts.first())
    }

    /// The contexts to read (`None`: the current one).
    fn contexts(&self) -> anyhow::Result<Vec<Option<String>>> {
        if self.all_contexts {
            let kc = kube::config::Kubeconfig::read().context("reading the kubeconfig")?;
            let names: Vec<Option<String>> =
                kc.contexts.into_iter().map(|c| Some(c.name)).collect();
            if names.is_empty() {
                return Err(podid_cli::Error::Usage(
                    "--all-contexts: the kubeconfig has no context".into(),
                )
                .into());
            }
            return Ok(names);
        }
        if self.contexts.is_empty() {
            return Ok(vec![None]);
        }
        Ok(self.contexts.iter().cloned().map(Some).collect())
    }
}

// Parsed once per run: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Report, per workload, whether it can move to Workload ID and what stands in the way.
    /// Exit code 0: nothing blocked; 3: something is blocked; 1: error.
    Report {
        #[command(flatten)]
        source: Source,
        /// Read snapshot files (kubectl get -o yaml|json output, or `podid snapshot`) instead of
        /// a live cluster (repeatable).
        #[arg(long = "from-file", value_name = "FILE")]
        from_file: Vec<PathBuf>,
        /// Output format.
        #[arg(short, long, value_enum, default_value = "table")]
        output: Format,
        /// Match as the original with --forceNamespaced: identity, binding and pod must share a namespace.
        #[arg(long)]
        force_namespaced: bool,
    },
    /// Move workloads from pod identity to Workload ID in stages, resumable and reversible
    /// (docs/cutover.md).
    Cutover {
        #[command(subcommand)]
        command: CutoverCommand,
    },
    /// podid's CustomResourceDefinitions, the variant the cluster's Kubernetes minor takes
    /// (docs/compatibility.md).
    Crds {
        #[command(subcommand)]
        command: CrdsCommand,
    },
    /// Pod identities as the AKS add-on's `az aks pod-identity` manages them: AzureIdentity and
    /// binding, the kubelet identity's role assignment, the node pools' assignment
    /// (docs/identities.md).
    Identity {
        #[command(subcommand)]
        command: IdentityCommand,
    },
    /// Pod identity exceptions (`az aks pod-identity exception`): pods with these labels reach
    /// the instance metadata service directly.
    Exception {
        #[command(subcommand)]
        command: ExceptionCommand,
    },
    /// Print a shell completion script.
    ///
    /// Examples: podid completion bash > /etc/bash_completion.d/podid;
    /// podid completion zsh > "${fpath[1]}/_podid"; podid completion fish > ~/.config/fish/completions/podid.fish
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write man pages (podid.1 and one per subcommand) into DIR.
    ///
    /// Example: podid man --dir /usr/local/share/man/man1
    Man {
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
    },
    /// Print this command reference as Markdown (docs/cli.md).
    #[command(hide = true)]
    Reference,
    /// Write a snapshot of everything the report reads (never Secrets) to a file.
    Snapshot {
        #[command(flatten)]
        source: Source,
        /// File to write ("-" for stdout).
        #[arg(short, long, default_value = "-")]
        output: PathBuf,
    },
}

#[derive(Subcommand)]
enum CrdsCommand {
    /// Print the CRDs as YAML for a Kubernetes version (default: the newest variant).
    ///
    /// Example: podid crds print --kube-version 1.30 > podid-crds.yaml
    Print {
        /// The cluster's Kubernetes version (1.30, v1.34.4); before 1.31 the CRDs come without
        /// selectableFields.
        #[arg(long, value_name = "VERSION")]
        kube_version: Option<String>,
    },
    /// Apply the CRDs for the cluster's own version (read from its API server), server-side,
    /// and wait until each is Established.
    ///
    /// Example: podid crds apply --context prod
    Apply {
        /// kubeconfig context (default: the current one).
        #[arg(long)]
        context: Option<String>,
        /// A server-side dry run: change nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(clap::Args)]
struct CutoverSource {
    #[command(flatten)]
    source: Source,
    /// One workload, as kind/name (for example deployment/web; repeatable).
    #[arg(long = "workload", value_name = "KIND/NAME")]
    workloads: Vec<String>,
    /// Treat workloads managed by Argo CD, Flux or Helm like any other (a live change to them
    /// is reverted or lost at their next sync: prefer `plan --patches`).
    #[arg(long)]
    allow_managed: bool,
}

#[derive(clap::Args)]
struct Change {
    /// Send every write as a server-side dry run; change nothing, wait for no rollout.
    #[arg(long)]
    dry_run: bool,
    /// Change more than one workload without asking.
    #[arg(short = 'y', long)]
    yes: bool,
    /// How long each workload's rollout may take (e.g. 300s, 5m).
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    timeout: std::time::Duration,
    /// Workloads rolled out at once (at least 1).
    #[arg(long, default_value_t = 1, value_parser = parse_max_parallel)]
    max_parallel: usize,
}

/// Azure as podid-operator is given it (`podid cutover prepare --direct`, `podid identity`).
#[derive(clap::Args)]
struct AzureFlags {
    /// azure.json, as podid-operator reads it; the flags and AZURE_* variables below win over it.
    #[arg(long = "cloud-config", value_name = "FILE", env = "AZURE_CLOUD_CONFIG")]
    cloud_config: Option<PathBuf>,
    /// The Entra tenant.
    #[arg(long = "azure-tenant-id", env = "AZURE_TENANT_ID")]
    tenant_id: Option<String>,
    #[arg(long = "azure-subscription-id", env = "AZURE_SUBSCRIPTION_ID")]
    subscription_id: Option<String>,
    /// The service principal podid acts as; its secret only from the environment,
    /// AZURE_CLIENT_SECRET, never a flag.
    #[arg(long = "azure-client-id", env = "AZURE_CLIENT_ID")]
    client_id: Option<String>,
    #[arg(long = "azure-client-secret", env = "AZURE_CLIENT_SECRET", hide = true)]
    client_secret: Option<String>,
    /// The cloud's name (AzurePublicCloud, AzureChinaCloud, AzureUSGovernmentCloud,
    /// AzureStackCloud with AZURE_ENVIRONMENT_FILEPATH).
    #[arg(long = "azure-cloud")]
    cloud: Option<String>,
    /// PEM file of CA certificates to trust for ARM and Entra besides the system's.
    #[arg(long = "azure-extra-ca-file", value_name = "FILE")]
    extra_ca_file: Option<PathBuf>,
}

/// The Azure of [`AzureFlags`]: cloud, credential and the HTTP client.
type AzureAccess = (
    podid_azure::CloudConfig,
    std::sync::Arc<dyn podid_azure::TokenCredential>,
    reqwest::Client,
);

impl AzureFlags {
    /// Whether any Azure was given.
    fn given(&self) -> bool {
        self.cloud_config.is_some() || self.tenant_id.is_some()
    }

    /// Cloud, credential and HTTP client; `what` names the command in the usage error when no
    /// Azure is given.
    fn load(&self, what: &str) -> anyhow::Result<AzureAccess> {
        use anyhow::Context;
        if !self.given() {
            return Err(podid_cli::Error::Usage(format!(
                "{what} needs Azure: --cloud-config FILE (azure.json), or --azure-tenant-id, --azure-subscription-id, --azure-client-id and AZURE_CLIENT_SECRET"
            ))
            .into());
        }
        self.check()?;
        let overrides = podid_azure::Overrides {
            tenant_id: self.tenant_id.clone(),
            subscription_id: self.subscription_id.clone(),
            client_id: self.client_id.clone(),
            client_secret: self.client_secret.clone(),
            cloud: self.cloud.clone(),
            environment_file: std::env::var("AZURE_ENVIRONMENT_FILEPATH").ok(),
            ..Default::default()
        };
        let cloud = podid_azure::CloudConfig::load(self.cloud_config.as_deref(), &overrides)
            .map_err(|e| {
                let flag = match &e {
                    podid_azure::Error::UnknownCloud(_) => "--azure-cloud",
                    _ => "--cloud-config",
                };
                podid_cli::Error::Usage(format!(
                    "{flag}: {e}; expected azure.json as podid-operator reads it (tenantId, subscriptionId, aadClientId, cloud), or the --azure-* flags"
                ))
            })?;
        let mut http = reqwest::Client::builder().timeout(std::time::Duration::from_secs(60));
        if let Some(path) = &self.extra_ca_file {
            for cert in read_ca_file("--azure-extra-ca-file", path)? {
                http = http.add_root_certificate(cert);
            }
        }
        let http = http.build()?;
        let credential = cloud
            .credential
            .build(http.clone())
            .context("Azure credential")?;
        Ok((cloud, credential, http))
    }

    /// The flags' own values (GUIDs, files), before anything is read.
    fn check(&self) -> Result<(), podid_cli::Error> {
        if let Some(t) = &self.tenant_id {
            check_tenant("--azure-tenant-id", t)?;
        }
        if let Some(s) = &self.subscription_id {
            podid_cli::identity::check_guid("--azure-subscription-id", s)?;
        }
        if let Some(c) = &self.client_id {
            podid_cli::identity::check_guid("--azure-client-id", c)?;
        }
        if let Some(path) = &self.cloud_config
            && !path.is_file()
        {
            return Err(podid_cli::Error::Usage(format!(
                "--cloud-config {}: no such file; expected azure.json as podid-operator reads it",
                path.display()
            )));
        }
        if let Some(path) = &self.extra_ca_file {
            read_ca_file("--azure-extra-ca-file", path)?;
        }
        Ok(())
    }

    /// The identity commands' Azure, when given.
    fn identity_azure(&self, what: &str) -> anyhow::Result<podid_cli::identity::Azure> {
        let (cloud, credential, http) = self.load(what)?;
        Ok(podid_cli::identity::Azure::new(&cloud, credential, http)?)
    }
}

/// `podid cutover prepare --direct`: Azure as podid-operator is given it.
#[derive(clap::Args)]
struct DirectFlags {
    /// Build the Workload ID side here, through ARM and the API server, when podid-operator is
    /// not running: one pass of its bridge over the workloads in scope (ServiceAccounts,
    /// federated credentials, a proof of each by token exchange, the records); nothing is
    /// deleted.
    #[arg(long)]
    direct: bool,
    #[command(flatten)]
    azure: AzureFlags,
    /// ARM id of the AKS cluster, whose oidcIssuerProfile gives the issuer when --oidc-issuer
    /// is not given (default: the API server's).
    #[arg(long = "aks-cluster-id")]
    aks_cluster_id: Option<String>,
}

impl DirectFlags {
    /// Azure for `--direct`, checked before anything is read.
    fn load(&self) -> anyhow::Result<AzureAccess> {
        if let Some(id) = &self.aks_cluster_id {
            podid_cli::identity::check_aks_cluster_id(id)?;
        }
        self.azure.load("--direct")
    }

    fn direct(
        &self,
        (cloud, credential, http): AzureAccess,
        oidc_issuer: Option<String>,
        match_options: podid_crds::policy::MatchOptions,
    ) -> anyhow::Result<podid_cli::cutover_run::Direct> {
        Ok(podid_cli::cutover_run::Direct {
            cloud,
            credential,
            http,
            oidc_issuer,
            aks_cluster_id: self.aks_cluster_id.clone(),
            match_options,
        })
    }
}

/// Output formats of `podid cutover plan` and `status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum CutoverFormat {
    Table,
    Json,
    Yaml,
}

#[derive(Subcommand)]
enum CutoverCommand {
    /// Per workload: target ServiceAccount, credentials, ServiceAccount annotations, the
    /// template change, the rollout it triggers, what holds it back. Changes nothing.
    /// Exit code 3 when a workload in scope is held back.
    Plan {
        #[command(flatten)]
        scope: CutoverSource,
        #[arg(short, long, value_enum, default_value = "table")]
        output: CutoverFormat,
        /// Also write the plan (YAML, or JSON with -o json) to FILE.
        #[arg(long, value_name = "FILE")]
        write: Option<PathBuf>,
        /// Write one kustomize strategic-merge patch per workload whose only hold is GitOps or
        /// Helm management (or that can switch) into DIR, to commit instead of switching live.
        #[arg(long, value_name = "DIR")]
        patches: Option<PathBuf>,
        /// Accepted like every cutover command's: plan changes nothing in the cluster anyway.
        #[arg(long, hide = true)]
        dry_run: bool,
    },
    /// Where every workload in scope stands, from the WorkloadMigrations and the live workloads.
    Status {
        #[command(flatten)]
        scope: CutoverSource,
        #[arg(short, long, value_enum, default_value = "table")]
        output: CutoverFormat,
        /// Accepted like every cutover command's: status changes nothing anyway.
        #[arg(long, hide = true)]
        dry_run: bool,
    },
    /// Wait until podid-operator's bridge has built and proven each workload's ServiceAccount,
    /// federated credentials and annotations; say what is still unproven and why. Writes
    /// nothing; pods are untouched.
    Prepare {
        #[command(flatten)]
        scope: CutoverSource,
        /// Report where each workload stands now; do not wait.
        #[arg(long)]
        dry_run: bool,
        /// How long to wait for the bridge in all (e.g. 300s, 5m).
        #[arg(long, default_value = "5m", value_parser = parse_duration)]
        timeout: std::time::Duration,
        /// With --direct: build for more than one workload without asking.
        #[arg(short = 'y', long)]
        yes: bool,
        #[command(flatten)]
        direct: DirectFlags,
    },
    /// Per switched workload: pods Running and Ready on the new template, the webhook's
    /// environment and projected token in them, and a token exchange for its ServiceAccount;
    /// records the stage Verified.
    Verify {
        #[command(flatten)]
        scope: CutoverSource,
        /// Verify, but record nothing (the record's write is a server-side dry run).
        #[arg(long)]
        dry_run: bool,
        /// How long each workload's pods may take to be Ready (e.g. 120s, 2m).
        #[arg(long, default_value = "2m", value_parser = parse_duration)]
        timeout: std::time::Duration,
        /// Entra's authority for the token exchange.
        #[arg(long, default_value = "https://login.microsoftonline.com/")]
        authority: url::Url,
        /// The tenant (default: the ServiceAccount's tenant-id annotation, else the record's).
        #[arg(long)]
        tenant_id: Option<String>,
        /// The resource a token is asked for.
        #[arg(long, default_value = "https://management.azure.com/")]
        resource: String,
        /// PEM file of CA certificates to trust for the authority besides the system's.
        #[arg(long, value_name = "FILE")]
        extra_ca_file: Option<PathBuf>,
    },
    /// Per verified workload: remove aadpodidbinding from its template and wait for the
    /// rollout; records the stage Completed. With --delete-bindings, delete the
    /// AzureIdentityBindings and AzureIdentities no workload still on pod identity needs.
    Finalize {
        #[command(flatten)]
        scope: CutoverSource,
        #[command(flatten)]
        change: Change,
        /// Also delete the bindings (and identities) of the finalized workloads that no
        /// workload still on pod identity matches.
        #[arg(long)]
        delete_bindings: bool,
    },
    /// Check the Workload ID webhook; then per workload record the template, change it and wait
    /// for the rollout, stopping at the first failure.
    Switch {
        #[command(flatten)]
        scope: CutoverSource,
        #[command(flatten)]
        change: Change,
    },
    /// Restore each switched workload's recorded template exactly and clear its stage.
    Rollback {
        #[command(flatten)]
        scope: CutoverSource,
        #[command(flatten)]
        change: Change,
        /// Also remove the Workload ID side built for each rolled-back workload: podid's
        /// federated credentials for its target ServiceAccount (through ARM) and that
        /// ServiceAccount if podid created it, unless another workload still moving or moved
        /// (or a pod on Workload ID) uses them. podid-operator's bridge, if running, builds them
        /// again for a workload on pod identity.
        #[arg(long)]
        remove_workload_id: bool,
        #[command(flatten)]
        azure: AzureFlags,
    },
}

/// What every identity and exception command takes.
#[derive(clap::Args)]
struct Target {
    /// kubeconfig context to use (default: the current one).
    #[arg(long = "context", value_name = "NAME")]
    context: Option<String>,
    /// Output format.
    #[arg(short, long, value_enum, default_value = "table")]
    output: podid_cli::identity::Output,
}

#[derive(Subcommand)]
enum IdentityCommand {
    /// Add a pod identity: look the user-assigned identity up in ARM, grant the cluster's
    /// kubelet identity "Managed Identity Operator" on it, create the AzureIdentity and its
    /// AzureIdentityBinding, and assign it to every node-pool scale set.
    #[command(after_help = "Examples:
  podid identity add -n payments --name payments-id \\
      --identity-resource-id /subscriptions/<sub>/resourceGroups/<rg>/providers/Microsoft.ManagedIdentity/userAssignedIdentities/payments-id \\
      --aks-cluster-id /subscriptions/<sub>/resourceGroups/<rg>/providers/Microsoft.ContainerService/managedClusters/<cluster> \\
      --cloud-config /etc/kubernetes/azure.json
  podid identity add -n payments --name reports-id --identity-resource-id <id> \\
      --binding-selector payments --kubelet-object-id <guid> --dry-run

Exit codes: 0 done; 2 bad input (nothing changed); 3 refused (kubenet without --allow-kubenet); 1 error.")]
    Add {
        #[command(flatten)]
        target: Target,
        /// Namespace of the AzureIdentity and its binding.
        #[arg(short = 'n', long = "namespace")]
        namespace: String,
        /// Name of the AzureIdentity (the binding is NAME-binding); an RFC 1123 label of at
        /// most 55 characters.
        #[arg(long)]
        name: String,
        /// ARM id of the user-assigned identity.
        #[arg(long = "identity-resource-id", value_name = "ID")]
        identity_resource_id: String,
        /// The aadpodidbinding label value of the pods that get the identity (default: NAME).
        /// Several identities may share one selector.
        #[arg(long = "binding-selector", value_name = "SELECTOR")]
        binding_selector: Option<String>,
        /// Object ID of the cluster's kubelet identity (the role assignment's principal).
        #[arg(long = "kubelet-object-id", value_name = "GUID")]
        kubelet_object_id: Option<String>,
        /// ARM id of the AKS cluster, whose identityProfile gives the kubelet identity.
        #[arg(long = "aks-cluster-id", value_name = "ID")]
        aks_cluster_id: Option<String>,
        /// Do not grant the kubelet identity "Managed Identity Operator" on the identity.
        #[arg(long)]
        no_role_assignment: bool,
        /// Do not assign the identity to the node pools' scale sets now: leave it to
        /// podid-operator --mode managed, which keeps every managed identity on every node pool.
        #[arg(long)]
        no_assign: bool,
        /// Add the identity on a kubenet cluster anyway (as the add-on's
        /// --enable-pod-identity-with-kubenet); read the mitigation it prints.
        #[arg(long)]
        allow_kubenet: bool,
        /// Print what would be created or changed; write nothing.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        azure: AzureFlags,
    },
    /// Delete a pod identity `podid identity add` created: its binding and AzureIdentity; its
    /// node-pool assignment and role assignment only when no other pod identity of the same
    /// Azure identity remains (an assignment someone else made stays).
    #[command(after_help = "Examples:
  podid identity delete -n payments --name payments-id --cloud-config /etc/kubernetes/azure.json
  podid identity delete -n payments --name payments-id --dry-run --cloud-config azure.json")]
    Delete {
        #[command(flatten)]
        target: Target,
        #[arg(short = 'n', long = "namespace")]
        namespace: String,
        #[arg(long)]
        name: String,
        /// Print what would be deleted or changed; write nothing.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        azure: AzureFlags,
    },
    /// Per pod identity: namespace, name, client ID, selectors, pods bound now, the node pools
    /// carrying it (with Azure given), and its migration state from the bridge's records.
    #[command(after_help = "Examples:
  podid identity list
  podid identity list -n payments -o yaml --cloud-config /etc/kubernetes/azure.json")]
    List {
        #[command(flatten)]
        target: Target,
        /// Only this namespace (default: all).
        #[arg(short = 'n', long = "namespace")]
        namespace: Option<String>,
        #[command(flatten)]
        azure: AzureFlags,
    },
}

#[derive(Subcommand)]
enum ExceptionCommand {
    /// Create an AzurePodIdentityException: pods with any of the labels bypass pod identity.
    #[command(after_help = "Example:
  podid exception add -n kube-tools --name probes --pod-labels app=probe,team=ops")]
    Add {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        exception: ExceptionArgs,
        /// Labels, name=value (comma-separated or repeated).
        #[arg(long = "pod-labels", value_name = "K=V,...", required = true)]
        pod_labels: Vec<String>,
    },
    /// Replace an exception's pod labels.
    #[command(after_help = "Example:
  podid exception update -n kube-tools --name probes --pod-labels app=probe")]
    Update {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        exception: ExceptionArgs,
        #[arg(long = "pod-labels", value_name = "K=V,...", required = true)]
        pod_labels: Vec<String>,
    },
    /// Delete an exception.
    #[command(after_help = "Example:
  podid exception delete -n kube-tools --name probes")]
    Delete {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        exception: ExceptionArgs,
    },
    /// List exceptions.
    #[command(after_help = "Example:
  podid exception list -n kube-tools -o json")]
    List {
        #[command(flatten)]
        target: Target,
        /// Only this namespace (default: all).
        #[arg(short = 'n', long = "namespace")]
        namespace: Option<String>,
    },
}

#[derive(clap::Args)]
struct ExceptionArgs {
    #[arg(short = 'n', long = "namespace")]
    namespace: String,
    #[arg(long)]
    name: String,
    /// Print what would be created or changed; write nothing.
    #[arg(long)]
    dry_run: bool,
}

async fn run_identity(command: IdentityCommand) -> anyhow::Result<ExitCode> {
    use podid_cli::identity::{
        AddRequest, render_changes, render_identities, run_add, run_delete, run_list,
    };
    match command {
        IdentityCommand::Add {
            target,
            namespace,
            name,
            identity_resource_id,
            binding_selector,
            kubelet_object_id,
            aks_cluster_id,
            no_role_assignment,
            no_assign,
            allow_kubenet,
            dry_run,
            azure,
        } => {
            let req = AddRequest {
                namespace,
                name,
                resource_id: identity_resource_id,
                selector: binding_selector,
                no_role_assignment,
                no_assign,
                allow_kubenet,
                kubelet_object_id,
                aks_cluster_id,
                dry_run,
            };
            // Input first: no kubeconfig or Azure needed to refuse it.
            req.validate()?;
            let azure = azure.identity_azure("podid identity add")?;
            let c = client(target.context.as_ref()).await?;
            let changes = run_add(&c, &azure, &req, |w| eprintln!("warning: {w}")).await?;
            print!("{}", render_changes(&changes, target.output, dry_run)?);
            Ok(ExitCode::SUCCESS)
        }
        IdentityCommand::Delete {
            target,
            namespace,
            name,
            dry_run,
            azure,
        } => {
            podid_cli::identity::check_label(
                "--namespace",
                &namespace,
                podid_cli::identity::MAX_LABEL_LEN,
            )?;
            podid_cli::identity::check_label("--name", &name, podid_cli::identity::MAX_LABEL_LEN)?;
            azure.check()?;
            let azure = if azure.given() {
                Some(azure.identity_azure("podid identity delete")?)
            } else {
                None
            };
            let c = client(target.context.as_ref()).await?;
            let changes = run_delete(&c, azure.as_ref(), &namespace, &name, dry_run).await?;
            print!("{}", render_changes(&changes, target.output, dry_run)?);
            Ok(ExitCode::SUCCESS)
        }
        IdentityCommand::List {
            target,
            namespace,
            azure,
        } => {
            if let Some(ns) = &namespace {
                podid_cli::identity::check_label(
                    "--namespace",
                    ns,
                    podid_cli::identity::MAX_LABEL_LEN,
                )?;
            }
            azure.check()?;
            let azure = if azure.given() {
                Some(azure.identity_azure("podid identity list")?)
            } else {
                None
            };
            let c = client(target.context.as_ref()).await?;
            let rows = run_list(&c, azure.as_ref(), namespace.as_deref()).await?;
            print!("{}", render_identities(&rows, target.output)?);
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn run_exception_command(command: ExceptionCommand) -> anyhow::Result<ExitCode> {
    use podid_cli::identity::{
        ExceptionVerb, render_changes, render_exceptions, run_exception, run_exception_list,
    };
    let (target, verb, e, labels) = match command {
        ExceptionCommand::List { target, namespace } => {
            let c = client(target.context.as_ref()).await?;
            let rows = run_exception_list(&c, namespace.as_deref()).await?;
            print!("{}", render_exceptions(&rows, target.output)?);
            return Ok(ExitCode::SUCCESS);
        }
        ExceptionCommand::Add {
            target,
            exception,
            pod_labels,
        } => (target, ExceptionVerb::Add, exception, pod_labels),
        ExceptionCommand::Update {
            target,
            exception,
            pod_labels,
        } => (target, ExceptionVerb::Update, exception, pod_labels),
        ExceptionCommand::Delete { target, exception } => {
            (target, ExceptionVerb::Delete, exception, Vec::new())
        }
    };
    use podid_cli::identity::{MAX_LABEL_LEN, check_label};
    check_label("--namespace", &e.namespace, MAX_LABEL_LEN)?;
    check_label("--name", &e.name, MAX_LABEL_LEN)?;
    if verb != ExceptionVerb::Delete {
        podid_cli::identity::parse_pod_labels(&labels)?;
    }
    let c = client(target.context.as_ref()).await?;
    let changes = run_exception(&c, verb, &e.namespace, &e.name, &labels, e.dry_run).await?;
    print!("{}", render_changes(&changes, target.output, e.dry_run)?);
    Ok(ExitCode::SUCCESS)
}

/// A duration of at least one second and at most a week: seconds (`300`, `300s`) or minutes
/// (`5m`).
fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    const WEEK: u64 = 7 * 24 * 3600;
    let (n, unit) = match s.strip_suffix('m') {
        Some(n) => (n, 60),
        None => (s.strip_suffix('s').unwrap_or(s), 1),
    };
    let expected = "expected seconds (300, 300s) or minutes (5m), from 1s to 7 days";
    let secs = n
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(unit))
        .ok_or_else(|| format!("{s:?}: {expected}"))?;
    if secs == 0 || secs > WEEK {
        return Err(format!("{s:?}: {expected}"));
    }
    Ok(std::time::Duration::from_secs(secs))
}

/// `--max-parallel`: a count of at least 1.
fn parse_max_parallel(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!(
            "{s:?}: expected a whole number of workloads, at least 1"
        )),
    }
}

/// `--oidc-issuer [CLUSTER=]URL`: an http(s) URL with a host, or empty (the cluster has none).
fn check_issuer(value: &str) -> Result<(), podid_cli::Error> {
    let url = match (!value.contains("://"))
        .then(|| value.split_once('='))
        .flatten()
    {
        Some((name, url)) if !name.is_empty() => url,
        Some(_) => {
            return Err(podid_cli::Error::Usage(format!(
                "--oidc-issuer {value:?}: expected URL or CLUSTER=URL, for example https://oidc.prod-aks.azure.com/<tenant>/<guid>/"
            )));
        }
        None => value,
    };
    if url.is_empty() {
        return Ok(());
    }
    match url::Url::parse(url) {
        Ok(u) if matches!(u.scheme(), "https" | "http") && u.host_str().is_some() => Ok(()),
        _ => Err(podid_cli::Error::Usage(format!(
            "--oidc-issuer {value:?}: {url:?} is not an issuer URL; expected https://host/path (for example https://oidc.prod-aks.azure.com/<tenant>/<guid>/), CLUSTER=URL, or empty for none"
        ))),
    }
}

/// `--context NAME`: a context of the kubeconfig.
fn check_context(name: &str) -> anyhow::Result<()> {
    let Ok(kc) = kube::config::Kubeconfig::read() else {
        // No kubeconfig at all: connecting says so.
        return Ok(());
    };
    if kc.contexts.iter().any(|c| c.name == name) {
        return Ok(());
    }
    let names: Vec<&str> = kc.contexts.iter().map(|c| c.name.as_str()).collect();
    Err(podid_cli::Error::Usage(format!(
        "--context {name:?}: no such context in the kubeconfig; expected one of: {}",
        names.join(", ")
    ))
    .into())
}

/// An Entra tenant: a GUID or a domain name (contoso.onmicrosoft.com).
fn check_tenant(flag: &str, value: &str) -> Result<(), podid_cli::Error> {
    if podid_cli::identity::check_guid(flag, value).is_ok()
        || (value.contains('.')
            && podid_crds::policy::is_dns_subdomain(&value.to_ascii_lowercase()))
    {
        return Ok(());
    }
    Err(podid_cli::Error::Usage(format!(
        "{flag}: {value:?} is not a tenant; expected a GUID such as 72f988bf-86f1-41af-91ab-2d7cd011db47 or a domain such as contoso.onmicrosoft.com"
    )))
}

/// A file podid writes (`--write`, `snapshot -o`): its directory exists, and it is not one.
fn check_output_file(flag: &str, path: &std::path::Path) -> Result<(), podid_cli::Error> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => std::path::Path::new("."),
    };
    if path.is_dir() {
        return Err(podid_cli::Error::Usage(format!(
            "{flag} {}: is a directory; expected a file to write",
            path.display()
        )));
    }
    if !dir.is_dir() {
        return Err(podid_cli::Error::Usage(format!(
            "{flag} {}: directory {} does not exist; expected a file in an existing directory",
            path.display(),
            dir.display()
        )));
    }
    Ok(())
}

/// A directory podid writes into (`--patches`, `man --dir`): absent (created) or a directory.
fn check_output_dir(flag: &str, path: &std::path::Path) -> Result<(), podid_cli::Error> {
    if path.exists() && !path.is_dir() {
        return Err(podid_cli::Error::Usage(format!(
            "{flag} {}: exists and is not a directory; expected a directory (created if absent)",
            path.display()
        )));
    }
    Ok(())
}

/// A PEM bundle of CA certificates (`--extra-ca-file`, `--azure-extra-ca-file`).
fn read_ca_file(
    flag: &str,
    path: &std::path::Path,
) -> Result<Vec<reqwest::Certificate>, podid_cli::Error> {
    let pem = std::fs::read(path).map_err(|e| {
        podid_cli::Error::Usage(format!(
            "{flag} {}: {e}; expected a readable PEM file of CA certificates",
            path.display()
        ))
    })?;
    match reqwest::Certificate::from_pem_bundle(&pem) {
        Ok(certs) if !certs.is_empty() => Ok(certs),
        _ => Err(podid_cli::Error::Usage(format!(
            "{flag} {}: no certificate in it; expected PEM (-----BEGIN CERTIFICATE-----)",
            path.display()
        ))),
    }
}

/// Asks before changing more than one workload, unless `--yes`; without a terminal to ask on,
/// refuses.
fn confirm(verb: &str, n: usize, yes: bool) -> anyhow::Result<()> {
    use std::io::{BufRead, IsTerminal, Write};
    if yes || n <= 1 {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        return Err(podid_cli::Error::Usage(format!(
            "{verb} would change {n} workloads and there is no terminal to confirm on: pass --yes"
        ))
        .into());
    }
    eprint!("{verb} {n} workloads? [y/N] ");
    std::io::stderr().flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    if matches!(line.trim(), "y" | "Y" | "yes") {
        Ok(())
    } else {
        anyhow::bail!("not confirmed: nothing was changed")
    }
}

/// The cutover's view: the report's inventory of the whole cluster (the plan's cross-workload
/// rules need every namespace, as the bridge sees them), its WorkloadMigrations, the scope.
async fn cutover_view(
    cs: &CutoverSource,
) -> anyhow::Result<(
    kube::Client,
    CutoverPlan,
    Inventory,
    ClusterContext,
    Vec<podid_crds::migration::WorkloadMigration>,
    CutoverScope,
)> {
    let context = cs.source.single_context()?;
    let selector = cs.source.check()?;
    let workloads = cs
        .workloads
        .iter()
        .map(|w| CutoverScope::parse_workload(w))
        .collect::<Result<Vec<_>, _>>()?;
    let c = client(context).await?;
    let mut inv = scan(&c, &Scope::default(), context.cloned(), cs.source.quiet).await?;
    override_issuers(std::slice::from_mut(&mut inv), &cs.source)?;
    let ctx = ClusterContext::from_inventory(&inv, MatchOptions::standard(false));
    let api: kube::Api<podid_crds::migration::WorkloadMigration> = kube::Api::all(c.clone());
    let records = match api.list(&Default::default()).await {
        Ok(l) => l.items,
        Err(kube::Error::Api(e)) if e.code == 404 => Vec::new(),
        Err(e) => return Err(e.into()),
    };
    let scope = CutoverScope {
        namespaces: cs.source.namespaces.clone(),
        selector,
        workloads,
    };
    scope.check_workloads_exist(&inv, &ctx)?;
    let plan = build_plan(&inv, &ctx, &records, &scope, cs.allow_managed);
    Ok((c, plan, inv, ctx, records, scope))
}

fn render_doc<T: serde::Serialize>(v: &T, format: CutoverFormat) -> anyhow::Result<String> {
    Ok(match format {
        CutoverFormat::Json => serde_json::to_string_pretty(v)? + "\n",
        _ => serde_yaml::to_string(v)?,
    })
}

async fn run_cutover(command: CutoverCommand) -> anyhow::Result<ExitCode> {
    let code = |troubled: bool| {
        if troubled {
            ExitCode::from(EXIT_BLOCKED)
        } else {
            ExitCode::SUCCESS
        }
    };
    match command {
        CutoverCommand::Plan {
            scope,
            output,
            write,
            patches,
            dry_run: _,
        } => {
            if let Some(file) = &write {
                check_output_file("--write", file)?;
            }
            if let Some(dir) = &patches {
                check_output_dir("--patches", dir)?;
            }
            let (_, plan, ..) = cutover_view(&scope).await?;
            match output {
                CutoverFormat::Table => print!("{}", plan_table(&plan)),
                f => print!("{}", render_doc(&plan, f)?),
            }
            if let Some(file) = write {
                let f = if output == CutoverFormat::Json {
                    CutoverFormat::Json
                } else {
                    CutoverFormat::Yaml
                };
                std::fs::write(&file, render_doc(&plan, f)?)
                    .with_context(|| format!("writing {}", file.display()))?;
                eprintln!("wrote {}", file.display());
            }
            if let Some(dir) = patches {
                std::fs::create_dir_all(&dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
                let mut n = 0;
                for e in plan.workloads.iter().filter(|e| e.patchable()) {
                    if let Some(p) = kustomize_patch(e) {
                        let path = dir.join(patch_file_name(e));
                        std::fs::write(&path, serde_yaml::to_string(&p)?)
                            .with_context(|| format!("writing {}", path.display()))?;
                        n += 1;
                    }
                }
                eprintln!("wrote {n} patch(es) to {}", dir.display());
            }
            Ok(code(plan.has_held()))
        }
        CutoverCommand::Status {
            scope,
            output,
            dry_run: _,
        } => {
            let (_, _, inv, ctx, records, scope) = cutover_view(&scope).await?;
            let status = build_status(&inv, &ctx, &records, &scope);
            match output {
                CutoverFormat::Table => print!("{}", status_table(&status)),
                f => print!("{}", render_doc(&status, f)?),
            }
            Ok(code(status.iter().any(status_troubled)))
        }
        CutoverCommand::Switch { scope, change } => {
            let (c, plan, ..) = cutover_view(&scope).await?;
            let entries: Vec<_> = plan
                .workloads
                .iter()
                .filter(|e| e.action == Action::Switch || e.stage == Some(Stage::Switched))
                .collect();
            if entries.is_empty() {
                print!("{}", outcome_table(&[], Some(&plan)));
                eprintln!("nothing to switch");
                return Ok(code(plan.has_held()));
            }
            confirm("switch", entries.len(), change.yes)?;
            let mut probes: Vec<(String, String)> = Vec::new();
            for e in &entries {
                if !probes.iter().any(|(ns, _)| *ns == e.namespace) {
                    probes.push((
                        e.namespace.clone(),
                        e.target_service_account.clone().unwrap_or_default(),
                    ));
                }
            }
            check_webhook(&c, &probes).await?;
            let opts = RunOptions {
                dry_run: change.dry_run,
                timeout: change.timeout,
                max_parallel: change.max_parallel,
                quiet: scope.source.quiet,
            };
            let outcomes = switch(&c, &entries, &opts).await;
            print!("{}", outcome_table(&outcomes, Some(&plan)));
            Ok(code(
                plan.has_held()
                    || outcomes
                        .iter()
                        .any(|o| o.result != "switched" && o.result != "dry-run"),
            ))
        }
        CutoverCommand::Prepare {
            scope,
            dry_run,
            timeout,
            yes,
            direct,
        } => {
            // Azure first: bad flags are refused before anything is read.
            let access = match direct.direct {
                true => Some(direct.load()?),
                false => None,
            };
            let (c, plan, _, ctx, records, _) = cutover_view(&scope).await?;
            let recorded = |e: &&podid_cli::cutover::PlanEntry| {
                records.iter().any(|r| {
                    r.metadata.namespace.as_deref() == Some(e.namespace.as_str())
                        && r.metadata.name.as_deref() == Some(e.record.as_str())
                })
            };
            if !direct.direct
                && !plan.workloads.is_empty()
                && !plan.workloads.iter().any(|e| recorded(&e))
            {
                return Err(podid_cli::Error::Refused(
                    "no workload in scope has a WorkloadMigration: prepare works through podid-operator's bridge, which has written none (is podid-operator running, with --bridge?); without it, `podid cutover prepare --direct` builds them through ARM".into(),
                )
                .into());
            }
            let mut outcomes = Vec::new();
            let mut entries = Vec::new();
            for e in &plan.workloads {
                let blocked: Vec<&str> = e
                    .holds
                    .iter()
                    .filter(|h| h.code == HoldCode::Blocked)
                    .map(|h| h.message.as_str())
                    .collect();
                if e.stage.is_some() {
                    outcomes.push(Outcome {
                        namespace: e.namespace.clone(),
                        workload: e.workload(),
                        result: "switched".into(),
                        message: format!(
                            "past prepare (stage {})",
                            e.stage.map_or("-", Stage::as_str)
                        ),
                    });
                } else if !blocked.is_empty() {
                    outcomes.push(Outcome {
                        namespace: e.namespace.clone(),
                        workload: e.workload(),
                        result: "blocked".into(),
                        message: blocked.join("; "),
                    });
                } else {
                    entries.push(e);
                }
            }
            let mut opts = RunOptions {
                dry_run,
                timeout,
                max_parallel: 1,
                quiet: scope.source.quiet,
            };
            if let Some(access) = access {
                // --oidc-issuer as given (already applied to the view); else the bridge finds it.
                let issuer = (!scope.source.oidc_issuers.is_empty())
                    .then(|| ctx.oidc_issuer.clone())
                    .flatten();
                if !dry_run {
                    let changing = entries.iter().filter(|e| e.unprepared()).count();
                    confirm("prepare", changing, yes)?;
                }
                let azure = direct.direct(access, issuer, ctx.match_options)?;
                let started = std::time::Instant::now();
                let built = prepare_direct(&c, &entries, &azure, dry_run, timeout).await?;
                if dry_run {
                    let mut done = built;
                    done.append(&mut outcomes);
                    print!("{}", outcome_table(&done, None));
                    return Ok(code(done.iter().any(|o| o.failed())));
                }
                // The pass has written the records: what remains is reading them.
                opts.timeout = timeout
                    .saturating_sub(started.elapsed())
                    .min(std::time::Duration::from_secs(10));
            }
            let mut done = prepare(&c, &entries, &opts).await;
            done.append(&mut outcomes);
            print!("{}", outcome_table(&done, None));
            Ok(code(
                done.iter()
                    .any(|o| o.result == "unproven" || o.result == "blocked"),
            ))
        }
        CutoverCommand::Verify {
            scope,
            dry_run,
            timeout,
            authority,
            tenant_id,
            resource,
            extra_ca_file,
        } => {
            // The exchange's flags first: bad ones are refused before anything is read.
            if !matches!(authority.scheme(), "https") || authority.host_str().is_none() {
                return Err(podid_cli::Error::Usage(format!(
                    "--authority {authority}: expected an https URL such as https://login.microsoftonline.com/ (the exchange sends a ServiceAccount token to it)"
                ))
                .into());
            }
            if let Some(t) = &tenant_id {
                check_tenant("--tenant-id", t)?;
            }
            let resource_ok = podid_cli::identity::check_guid("--resource", &resource).is_ok()
                || url::Url::parse(&resource).is_ok_and(|u| u.has_host());
            if !resource_ok {
                return Err(podid_cli::Error::Usage(format!(
                    "--resource {resource:?}: expected a resource URI such as https://management.azure.com/ or an application ID (GUID)"
                ))
                .into());
            }
            let certs = match &extra_ca_file {
                Some(path) => read_ca_file("--extra-ca-file", path)?,
                None => Vec::new(),
            };
            let (c, plan, ..) = cutover_view(&scope).await?;
            let entries: Vec<_> = plan
                .workloads
                .iter()
                .filter(|e| e.stage.is_some_and(|s| s >= Stage::Switched))
                .collect();
            if entries.is_empty() {
                eprintln!("nothing to verify: no workload in scope is switched");
                return Ok(code(!plan.workloads.is_empty()));
            }
            let mut http = reqwest::Client::builder()
                .no_proxy()
                .redirect(reqwest::redirect::Policy::none())
                .connect_timeout(std::time::Duration::from_secs(5))
                .timeout(std::time::Duration::from_secs(60));
            for cert in certs {
                http = http.add_root_certificate(cert);
            }
            let ex = Exchange {
                http: http.build().context("HTTP client")?,
                authority,
                tenant_id,
                resource,
            };
            let opts = RunOptions {
                dry_run,
                timeout,
                max_parallel: 1,
                quiet: scope.source.quiet,
            };
            let outcomes = verify(&c, &entries, &opts, &ex).await;
            print!("{}", outcome_table(&outcomes, None));
            Ok(code(outcomes.iter().any(Outcome::failed)))
        }
        CutoverCommand::Finalize {
            scope,
            change,
            delete_bindings: delete,
        } => {
            let (c, plan, ..) = cutover_view(&scope).await?;
            let entries: Vec<_> = plan
                .workloads
                .iter()
                .filter(|e| matches!(e.stage, Some(Stage::Verified | Stage::Completed)))
                .collect();
            let unverified: Vec<Outcome> = plan
                .workloads
                .iter()
                .filter(|e| e.stage == Some(Stage::Switched))
                .map(|e| Outcome {
                    namespace: e.namespace.clone(),
                    workload: e.workload(),
                    result: "held".into(),
                    message: "switched but not verified: run `podid cutover verify` first".into(),
                })
                .collect();
            if entries.is_empty() {
                print!("{}", outcome_table(&unverified, None));
                eprintln!("nothing to finalize: no workload in scope passed verify");
                return Ok(code(!unverified.is_empty()));
            }
            confirm("finalize", entries.len(), change.yes)?;
            let opts = RunOptions {
                dry_run: change.dry_run,
                timeout: change.timeout,
                max_parallel: change.max_parallel,
                quiet: scope.source.quiet,
            };
            let mut outcomes = finalize(&c, &entries, &opts).await;
            if delete {
                let done = done_with(&entries, &outcomes, "completed");
                // A fresh view: the finalized templates no longer carry the label.
                let (_, _, inv, ctx, ..) = cutover_view(&scope).await?;
                let unused = podid_cli::cutover::unused_bindings(&done, &inv, &ctx);
                outcomes.extend(delete_bindings(&c, &unused, &done, change.dry_run).await);
            }
            outcomes.extend(unverified.iter().cloned());
            print!("{}", outcome_table(&outcomes, None));
            Ok(code(
                !unverified.is_empty() || outcomes.iter().any(|o| o.failed()),
            ))
        }
        CutoverCommand::Rollback {
            scope,
            change,
            remove_workload_id,
            azure,
        } => {
            // Checked before anything changes.
            let arm = match remove_workload_id {
                true => {
                    let (cloud, credential, http) = azure.load("--remove-workload-id")?;
                    Some(podid_azure::MsiCredentials::new(
                        &cloud.endpoints.arm,
                        &cloud.endpoints.arm_audience,
                        credential,
                        http,
                    )?)
                }
                false => None,
            };
            let (c, plan, ..) = cutover_view(&scope).await?;
            let entries: Vec<_> = plan
                .workloads
                .iter()
                .filter(|e| {
                    e.stage.is_some()
                        || e.recorded
                        || (remove_workload_id && e.bridge_stage.is_some())
                })
                .collect();
            if entries.is_empty() {
                eprintln!("nothing to roll back: no workload in scope has a cutover stage");
                return Ok(ExitCode::SUCCESS);
            }
            confirm("roll back", entries.len(), change.yes)?;
            let opts = RunOptions {
                dry_run: change.dry_run,
                timeout: change.timeout,
                max_parallel: change.max_parallel,
                quiet: scope.source.quiet,
            };
            let mut outcomes = rollback(&c, &entries, &opts).await;
            if let Some(arm) = arm {
                let back = done_with(&entries, &outcomes, "rolled-back");
                outcomes.extend(remove_workload_id_side(&c, &back, &arm, change.dry_run).await);
            }
            print!("{}", outcome_table(&outcomes, None));
            Ok(code(outcomes.iter().any(Outcome::failed)))
        }
    }
}

/// The entries whose outcome is `result` (or a dry run of it).
fn done_with<'a>(
    entries: &[&'a podid_cli::cutover::PlanEntry],
    outcomes: &[Outcome],
    result: &str,
) -> Vec<&'a podid_cli::cutover::PlanEntry> {
    entries
        .iter()
        .filter(|e| {
            outcomes.iter().any(|o| {
                o.namespace == e.namespace
                    && o.workload == e.workload()
                    && (o.result == result || o.result == "dry-run")
            })
        })
        .copied()
        .collect()
}

async fn client(context: Option<&String>) -> anyhow::Result<kube::Client> {
    if let Some(name) = context {
        check_context(name)?;
    }
    let opts = kube::config::KubeConfigOptions {
        context: context.cloned(),
        ..Default::default()
    };
    let cfg = kube::Config::from_kubeconfig(&opts)
        .await
        .or_else(|_| kube::Config::incluster())
        .context(
            "no usable kubeconfig (set KUBECONFIG or --context), and not running in a cluster",
        )?;
    Ok(kube::Client::try_from(cfg)?)
}

/// Reads every context of `source` (one, several, or all of the kubeconfig's).
async fn live(source: &Source) -> anyhow::Result<Vec<Inventory>> {
    let scope = Scope {
        namespaces: source.namespaces.clone(),
    };
    let mut out = Vec::new();
    for context in source.contexts()? {
        let name = context.as_deref().unwrap_or("(current)");
        let c = client(context.as_ref())
            .await
            .with_context(|| format!("context {name}"))?;
        let inv = scan(&c, &scope, context.clone(), source.quiet)
            .await
            .with_context(|| format!("context {name}"))?;
        out.push(inv);
    }
    override_issuers(&mut out, source)?;
    Ok(out)
}

/// Applies `--oidc-issuer`: a bare URL to the one cluster, `CLUSTER=URL` to the cluster so
/// named. An empty URL says the cluster has none.
fn override_issuers(clusters: &mut [Inventory], source: &Source) -> anyhow::Result<()> {
    for value in &source.oidc_issuers {
        let named = (!value.contains("://"))
            .then(|| value.split_once('='))
            .flatten();
        let (target, url) = match named {
            Some((name, url)) => {
                let Some(inv) = clusters
                    .iter_mut()
                    .find(|c| c.cluster.name.as_deref() == Some(name))
                else {
                    let names: Vec<&str> = clusters
                        .iter()
                        .filter_map(|c| c.cluster.name.as_deref())
                        .collect();
                    return Err(podid_cli::Error::Usage(format!(
                        "--oidc-issuer {value}: no cluster named {name} (read: {})",
                        names.join(", ")
                    ))
                    .into());
                };
                (inv, url)
            }
            None => match clusters {
                [one] => (one, value.as_str()),
                _ => {
                    return Err(podid_cli::Error::Usage(format!(
                        "--oidc-issuer {value}: several clusters are read; name the cluster (--oidc-issuer CLUSTER=URL)"
                    ))
                    .into());
                }
            },
        };
        target.cluster.oidc_issuer = Some(url.to_owned()).filter(|i| !i.is_empty());
        target.facts_recorded = true;
    }
    Ok(())
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Report {
            source,
            from_file,
            output,
            force_namespaced,
        } => {
            if !from_file.is_empty() && (source.all_contexts || !source.contexts.is_empty()) {
                return Err(podid_cli::Error::Usage(
                    "--from-file reads snapshot files, not kubeconfig contexts: drop --context/--all-contexts".into(),
                )
                .into());
            }
            let selector = source.check()?;
            let clusters = if from_file.is_empty() {
                live(&source).await?
            } else {
                let mut clusters =
                    Inventory::clusters_from_files(&from_file).context("--from-file")?;
                override_issuers(&mut clusters, &source)?;
                clusters
            };
            let contexts: Vec<ClusterContext> = clusters
                .iter()
                .map(|inv| {
                    ClusterContext::from_inventory(inv, MatchOptions::standard(force_namespaced))
                })
                .collect();
            let pairs: Vec<(&Inventory, &ClusterContext)> =
                clusters.iter().zip(contexts.iter()).collect();
            let report = Report::build_fleet(&pairs, &source.namespaces, selector.as_ref());
            for (kind, n) in &report.skipped_kinds {
                eprintln!("note: skipped {n} object(s) of kind {kind} (not used by the report)");
            }
            print!("{}", render(&report, output)?);
            Ok(if report.has_blocked() {
                ExitCode::from(EXIT_BLOCKED)
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Cutover { command } => run_cutover(command).await,
        Command::Completion { shell } => {
            use clap::CommandFactory;
            let mut cmd = Cli::command();
            clap_complete::generate(shell, &mut cmd, "podid", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Command::Man { dir } => {
            use clap::CommandFactory;
            check_output_dir("--dir", &dir)?;
            std::fs::create_dir_all(&dir).with_context(|| format!("--dir {}", dir.display()))?;
            clap_mangen::generate_to(Cli::command(), &dir)
                .with_context(|| format!("writing man pages into {}", dir.display()))?;
            eprintln!("wrote man pages into {}", dir.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Reference => {
            use clap::CommandFactory;
            print!(
                "{}",
                podid_telemetry::reference::markdown(
                    &Cli::command(),
                    "`podid` command reference",
                    "A test (cli_reference_is_current) fails when it is out of date: regenerate with `cargo run -q -p podid-cli --bin podid -- reference > docs/cli.md`.",
                )
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Crds { command } => match command {
            CrdsCommand::Print { kube_version } => {
                let minor = match kube_version {
                    Some(v) => podid_cli::crds::parse_kube_version(&v)?,
                    None => podid_crds::SELECTABLE_FIELDS_MINOR,
                };
                print!("{}", podid_crds::crds_yaml_for(minor)?);
                Ok(ExitCode::SUCCESS)
            }
            CrdsCommand::Apply { context, dry_run } => {
                let c = client(context.as_ref()).await?;
                for line in podid_cli::crds::apply(&c, dry_run).await? {
                    println!("{line}");
                }
                Ok(ExitCode::SUCCESS)
            }
        },
        Command::Identity { command } => run_identity(command).await,
        Command::Exception { command } => run_exception_command(command).await,
        Command::Snapshot { source, output } => {
            source.check()?;
            if output.as_os_str() != "-" {
                check_output_file("-o/--output", &output)?;
            }
            let mut yaml = String::new();
            for inv in live(&source).await? {
                yaml.push_str(&inv.to_snapshot_yaml()?);
            }
            if output.as_os_str() == "-" {
                print!("{yaml}");
            } else {
                std::fs::write(&output, yaml)
                    .with_context(|| format!("writing {}", output.display()))?;
                eprintln!("wrote {}", output.display());
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

#[tokio::main]
pub async fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = match tracing_subscriber::EnvFilter::try_new(&cli.log) {
        Ok(f) => f,
        Err(e) => {
            eprintln!(
                "error: --log {:?}: {e}; expected a filter such as warn, debug or podid_cli=debug,kube=warn",
                cli.log
            );
            return ExitCode::from(EXIT_USAGE);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            // A malformed -l is a usage error, like clap's own; a refusal is a block.
            match e.downcast_ref::<podid_cli::Error>() {
                Some(podid_cli::Error::Selector { .. } | podid_cli::Error::Usage(_)) => {
                    ExitCode::from(EXIT_USAGE)
                }
                Some(podid_cli::Error::Refused(_)) => ExitCode::from(EXIT_BLOCKED),
                _ => ExitCode::FAILURE,
            }
        }
    }
}
