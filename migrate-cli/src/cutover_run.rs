//! The cutover's live steps: the Workload ID webhook check, `switch` and `rollback`. Every step
//! reads the cluster first and writes only what is missing, so a rerun after an interruption
//! (Ctrl-C, SIGKILL, a lost connection) picks up where the last run stopped. Progress lives in
//! each workload's `WorkloadMigration` (`spec.stage`, `spec.recordedTemplate`, field manager
//! `podid-cutover`), never in a local file.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use podid_azure::token::{SystemClock, TokenError, TokenSource, WorkloadIdentitySource};
use podid_crds::cutover::{
    Rollout, TemplateChange, TemplateKind, finalize_patch, injection_problems, restore_patch,
    rollout, template_kind, template_of,
};
use podid_crds::migration::{CUTOVER_MANAGER, Stage, TOKEN_EXCHANGE_AUDIENCE, WorkloadMigration};
use podid_crds::{
    POD_LABEL, WI_CLIENT_ID_ANNOTATION, WI_TENANT_ID_ANNOTATION, WI_USE_LABEL, WI_WEBHOOK_NAME,
};
use serde_json::{Value, json};

use crate::Error;
use crate::cutover::PlanEntry;

/// The environment variable the Workload ID webhook injects into every labelled pod.
pub const WEBHOOK_MARK_ENV: &str = "AZURE_FEDERATED_TOKEN_FILE";

/// How a run behaves.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Server-side dry run: every write is sent with `dryRun=All`; no rollout is waited for.
    pub dry_run: bool,
    /// How long one workload's rollout may take.
    pub timeout: Duration,
    /// Workloads rolled out at once.
    pub max_parallel: usize,
    /// No progress bars (plain lines instead).
    pub quiet: bool,
}

/// What happened to one workload.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Outcome {
    pub namespace: String,
    pub workload: String,
    /// `switched`, `rolled-back`, `failed`, `not-started`, `dry-run`.
    pub result: String,
    pub message: String,
}

impl Outcome {
    pub fn failed(&self) -> bool {
        self.result == "failed"
    }
}

fn api_resource(kind: &str) -> Option<ApiResource> {
    Some(match kind {
        "Deployment" => ApiResource::erase::<Deployment>(&()),
        "StatefulSet" => ApiResource::erase::<StatefulSet>(&()),
        "DaemonSet" => ApiResource::erase::<DaemonSet>(&()),
        "CronJob" => ApiResource::erase::<CronJob>(&()),
        "Job" => ApiResource::erase::<Job>(&()),
        "ReplicaSet" => ApiResource::erase::<ReplicaSet>(&()),
        _ => return None,
    })
}

fn workload_api(client: &Client, e: &PlanEntry) -> Result<Api<DynamicObject>, Error> {
    let ar = api_resource(&e.kind).ok_or_else(|| {
        Error::Usage(format!(
            "{}/{}: the cutover does not change a {}'s template",
            e.namespace,
            e.workload(),
            e.kind
        ))
    })?;
    Ok(Api::namespaced_with(client.clone(), &e.namespace, &ar))
}

async fn get_json(api: &Api<DynamicObject>, name: &str) -> Result<Value, Error> {
    Ok(serde_json::to_value(api.get(name).await?)?)
}

fn write_params(dry_run: bool) -> PatchParams {
    PatchParams {
        field_manager: Some(CUTOVER_MANAGER.into()),
        dry_run,
        ..Default::default()
    }
}

/// Refuses unless the Workload ID webhook is registered (a MutatingWebhookConfiguration with a
/// webhook named `mutation.azure-workload-identity.io`) and answering: in each namespace, a
/// server-side dry-run create of a labelled pod running as `service account` comes back with
/// `AZURE_FEDERATED_TOKEN_FILE` injected. The webhook fails closed, so a broken one would stop
/// every new labelled pod: the switch must not start then.
pub async fn check_webhook(client: &Client, probes: &[(String, String)]) -> Result<(), Error> {
    let configs: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let registered = configs
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .any(|c| {
            c.webhooks
                .iter()
                .flatten()
                .any(|w| w.name == WI_WEBHOOK_NAME)
        });
    if !registered {
        return Err(Error::Refused(format!(
            "the Workload ID webhook is not registered (no MutatingWebhookConfiguration has a webhook named {WI_WEBHOOK_NAME}); install it (az aks update --enable-workload-identity, or the azure-workload-identity chart) before switching: nothing was changed"
        )));
    }
    for (ns, sa) in probes {
        let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
        let probe: Pod = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"generateName": "podid-webhook-probe-", "labels": {WI_USE_LABEL: "true"}},
            "spec": {"serviceAccountName": sa,
                     "containers": [{"name": "probe", "image": "podid.invalid/webhook-probe:0"}]}
        }))?;
        let pp = PostParams {
            dry_run: true,
            ..Default::default()
        };
        let mutated = match pods.create(&pp, &probe).await {
            Ok(p) => p,
            Err(kube::Error::Api(e)) if !e.message.contains(WI_WEBHOOK_NAME) => {
                return Err(Error::Refused(format!(
                    "a dry-run create of a labelled pod in namespace {ns} was refused by something other than the Workload ID webhook ({}: {}), so whether the webhook answers cannot be told: fix that first; nothing was changed",
                    e.code, e.message
                )));
            }
            Err(kube::Error::Api(e)) => {
                return Err(Error::Refused(format!(
                    "the Workload ID webhook is registered but not answering in namespace {ns}: a dry-run create of a labelled pod failed ({}: {}); it fails closed, so switching now would stop every new labelled pod: nothing was changed",
                    e.code, e.message
                )));
            }
            Err(e) => return Err(e.into()),
        };
        let injected = mutated
            .spec
            .iter()
            .flat_map(|s| &s.containers)
            .flat_map(|c| c.env.iter().flatten())
            .any(|e| e.name == WEBHOOK_MARK_ENV);
        if !injected {
            return Err(Error::Refused(format!(
                "the Workload ID webhook did not mutate a labelled pod in namespace {ns} (a dry-run create came back without {WEBHOOK_MARK_ENV}): check its namespace and object selectors; nothing was changed"
            )));
        }
    }
    Ok(())
}

/// One line of progress per workload: a spinner on a terminal, plain lines otherwise.
#[derive(Clone)]
struct Progress {
    bar: Option<ProgressBar>,
    label: String,
}

impl Progress {
    fn new(multi: Option<&MultiProgress>, label: String) -> Self {
        let bar = multi.map(|m| {
            let b = m.add(ProgressBar::new_spinner());
            b.set_style(
                ProgressStyle::with_template("{spinner} {prefix} {msg} · {elapsed}")
                    .expect("progress template"),
            );
            b.set_prefix(label.clone());
            b.enable_steady_tick(Duration::from_millis(120));
            b
        });
        Self { bar, label }
    }

    /// A step worth a line of its own.
    fn say(&self, msg: &str) {
        match &self.bar {
            Some(b) => b.set_message(msg.to_owned()),
            None => eprintln!("{}: {msg}", self.label),
        }
    }

    /// A rollout's current state (only on a terminal).
    fn tick(&self, msg: &str) {
        if let Some(b) = &self.bar {
            b.set_message(msg.to_owned());
        }
    }

    fn done(&self, msg: &str) {
        match &self.bar {
            Some(b) => b.finish_with_message(msg.to_owned()),
            None => eprintln!("{}: {msg}", self.label),
        }
    }
}

/// Waits for the workload's rollout: done, failed (Deployment: ProgressDeadlineExceeded), or
/// not done within `timeout`.
async fn wait_rollout(
    api: &Api<DynamicObject>,
    e: &PlanEntry,
    timeout: Duration,
    progress: &Progress,
) -> Result<(), String> {
    let start = Instant::now();
    loop {
        let obj = get_json(api, &e.name).await.map_err(|x| x.to_string())?;
        match rollout(&e.kind, &obj) {
            Rollout::Done => return Ok(()),
            Rollout::Failed(m) => return Err(m),
            Rollout::Progressing(m) => {
                if start.elapsed() >= timeout {
                    return Err(format!("not rolled out after {}s: {m}", timeout.as_secs()));
                }
                progress.tick(&m);
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Writes the cutover's part of a record (`spec.stage`, `spec.recordedTemplate`,
/// `spec.removedPodIdentity`) by server-side apply. Every apply names all the fields the cutover
/// keeps: a field left out is a field removed. `read` is the record as the caller read it: the
/// write is made only if its resource version is still current (another cutover run may not
/// have changed it meanwhile). When only the bridge has written since (its status, with the
/// cutover's fields as read), the write is retried on the fresh version; a change to the
/// cutover's fields is a conflict returned to the caller.
async fn apply_record(
    client: &Client,
    e: &PlanEntry,
    read: &WorkloadMigration,
    stage: Option<Stage>,
    recorded: Option<&Value>,
    removed: &[Value],
    dry_run: bool,
) -> Result<(), Error> {
    let api: Api<WorkloadMigration> = Api::namespaced(client.clone(), &e.namespace);
    let mut spec = json!({"workload": {"kind": e.kind, "name": e.name}});
    if let Some(s) = stage {
        spec["stage"] = serde_json::to_value(s)?;
    }
    if let Some(t) = recorded {
        spec["recordedTemplate"] = t.clone();
    }
    if !removed.is_empty() {
        spec["removedPodIdentity"] = removed.into();
    }
    let ours = |r: &WorkloadMigration| {
        (
            r.spec.stage,
            r.spec.recorded_template.clone(),
            r.spec.removed_pod_identity.clone(),
        )
    };
    let mut version = read.metadata.resource_version.clone();
    for attempt in 0.. {
        let mut meta = json!({"name": e.record, "namespace": e.namespace});
        if let Some(rv) = &version {
            // A precondition: the record has not changed since it was read.
            meta["resourceVersion"] = rv.clone().into();
        }
        let body = json!({"apiVersion": "podid.dev/v1alpha1", "kind": "WorkloadMigration",
                          "metadata": meta, "spec": spec});
        let result = api
            .patch(
                &e.record,
                &PatchParams {
                    force: false,
                    ..PatchParams::apply(CUTOVER_MANAGER)
                }
                .with_dry_run_if(dry_run),
                &Patch::Apply(&body),
            )
            .await;
        match result {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(x)) if x.code == 409 && version.is_some() && attempt < 5 => {
                let fresh = api.get(&e.record).await?;
                if ours(&fresh) != ours(read) {
                    return Err(kube::Error::Api(x).into());
                }
                version = fresh.metadata.resource_version;
            }
            Err(x) => return Err(x.into()),
        }
    }
    unreachable!("the loop returns")
}

trait DryRunIf {
    fn with_dry_run_if(self, dry_run: bool) -> Self;
}

impl DryRunIf for PatchParams {
    fn with_dry_run_if(mut self, dry_run: bool) -> Self {
        self.dry_run = dry_run;
        self
    }
}

/// Switches one workload: records its template (once), sets `spec.stage: Switched`, applies
/// the template change, waits for the rollout.
async fn switch_one(
    client: &Client,
    e: &PlanEntry,
    opts: &RunOptions,
    progress: &Progress,
) -> Result<String, String> {
    let fail = |x: Error| x.to_string();
    let api = workload_api(client, e).map_err(fail)?;
    let records: Api<WorkloadMigration> = Api::namespaced(client.clone(), &e.namespace);
    let record = records
        .get(&e.record)
        .await
        .map_err(|x| format!("reading its WorkloadMigration {}: {x}", e.record))?;
    let target = e
        .target_service_account
        .clone()
        .ok_or("the plan names no target ServiceAccount")?;
    let obj = get_json(&api, &e.name).await.map_err(fail)?;
    let template = template_of(&e.kind, &obj)
        .cloned()
        .ok_or("the workload has no pod template")?;
    // 0. The webhook does not look at the ServiceAccount: without the client-id annotation the
    // pods would come up without AZURE_CLIENT_ID. The bridge writes it; refuse until it has.
    let change = TemplateChange::for_template(&template, &target);
    if !change.is_empty() {
        client_id_of(client, &e.namespace, &target).await?;
    }
    // 1. The template from before the first change, written once and never overwritten.
    let recorded = match &record.spec.recorded_template {
        Some(t) => t.clone(),
        None => template.clone(),
    };
    if record.spec.recorded_template.is_none() || record.spec.stage.is_none() {
        progress.say("recording the current template");
        apply_record(
            client,
            e,
            &record,
            Some(record.spec.stage.unwrap_or(Stage::Switched)),
            Some(&recorded),
            &record.spec.removed_pod_identity,
            opts.dry_run,
        )
        .await
        .map_err(fail)?;
    }
    // 2. The template change (nothing when already applied).
    if !change.is_empty() {
        progress.say("changing the template");
        let patch = change
            .workload_patch(&e.kind)
            .ok_or("the workload has no pod template")?;
        api.patch(
            &e.name,
            &write_params(opts.dry_run),
            &Patch::Strategic(&patch),
        )
        .await
        .map_err(|x| format!("changing the template: {x}"))?;
    }
    if opts.dry_run {
        return Ok(if change.is_empty() {
            "would record the template; the template is already switched".into()
        } else {
            "would record the template and change it (server-side dry run passed)".into()
        });
    }
    // 3. The rollout.
    progress.say("rolling out");
    let start = Instant::now();
    wait_rollout(&api, e, opts.timeout, progress).await?;
    Ok(format!(
        "switched, rolled out in {}s",
        start.elapsed().as_secs()
    ))
}

/// Runs `one` over `entries`, at most `max_parallel` at once, in order, closing each workload's
/// progress line with its outcome; with `stop_on_failure`, after the first failure no further
/// workload is started (those are reported `not-started`).
async fn run_all<'a, F, Fut>(
    entries: &'a [&'a PlanEntry],
    opts: &RunOptions,
    ok_result: &str,
    stop_on_failure: bool,
    one: F,
) -> Vec<Outcome>
where
    F: Fn(&'a PlanEntry, Progress) -> Fut,
    Fut: std::future::Future<Output = Result<String, String>> + 'a,
{
    let multi = (!opts.quiet && std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .then(MultiProgress::new);
    let mut pending = entries.iter();
    let mut running = FuturesUnordered::new();
    let mut outcomes = Vec::new();
    let mut stopped = false;
    loop {
        while !stopped && running.len() < opts.max_parallel.max(1) {
            let Some(e) = pending.next() else { break };
            let label = format!("{}/{}", e.namespace, e.workload());
            let progress = Progress::new(multi.as_ref(), label);
            let fut = one(e, progress.clone());
            running.push(async move {
                let r = fut.await;
                progress.done(match &r {
                    Ok(m) => m,
                    Err(m) => m,
                });
                (*e, r)
            });
        }
        let Some((e, result)) = running.next().await else {
            break;
        };
        let (result, message) = match result {
            Ok(m) => (
                if opts.dry_run { "dry-run" } else { ok_result }.to_owned(),
                m,
            ),
            Err(m) => {
                stopped |= stop_on_failure;
                ("failed".to_owned(), m)
            }
        };
        outcomes.push(Outcome {
            namespace: e.namespace.clone(),
            workload: e.workload(),
            result,
            message,
        });
    }
    for e in pending {
        outcomes.push(Outcome {
            namespace: e.namespace.clone(),
            workload: e.workload(),
            result: "not-started".into(),
            message: "an earlier workload failed; left untouched".into(),
        });
    }
    outcomes
}

/// `podid cutover switch` for these workloads (checked by [`check_webhook`] first).
pub async fn switch(client: &Client, entries: &[&PlanEntry], opts: &RunOptions) -> Vec<Outcome> {
    run_all(entries, opts, "switched", true, |e, progress| async move {
        switch_one(client, e, opts, &progress).await
    })
    .await
}

/// Rolls one workload back: restores the recorded template exactly, waits for the rollout,
/// checks the template equals the recorded one, then removes the cutover's fields from the
/// record (the bridge's status and credentials stay).
async fn rollback_one(
    client: &Client,
    e: &PlanEntry,
    opts: &RunOptions,
    progress: &Progress,
) -> Result<String, String> {
    let fail = |x: Error| x.to_string();
    let api = workload_api(client, e).map_err(fail)?;
    let records: Api<WorkloadMigration> = Api::namespaced(client.clone(), &e.namespace);
    let record = records
        .get(&e.record)
        .await
        .map_err(|x| format!("reading its WorkloadMigration {}: {x}", e.record))?;
    let obj = get_json(&api, &e.name).await.map_err(fail)?;
    let template = template_of(&e.kind, &obj)
        .cloned()
        .ok_or("the workload has no pod template")?;
    let recreated =
        recreate_removed(client, &record.spec.removed_pod_identity, opts.dry_run).await?;
    if !recreated.is_empty() {
        progress.say(&format!("re-created {}", recreated.join(", ")));
    }
    let mut restored = false;
    if let Some(recorded) = &record.spec.recorded_template {
        if let Some(patch) = restore_patch(&e.kind, &template, recorded) {
            progress.say("restoring the recorded template");
            api.patch(&e.name, &write_params(opts.dry_run), &Patch::Merge(&patch))
                .await
                .map_err(|x| format!("restoring the template: {x}"))?;
            restored = true;
        }
        if !opts.dry_run {
            progress.say("rolling out");
            wait_rollout(&api, e, opts.timeout, progress).await?;
            let now = get_json(&api, &e.name).await.map_err(fail)?;
            if template_of(&e.kind, &now) != Some(recorded) {
                return Err("the template differs from the recorded one after the restore (changed meanwhile?); rerun rollback".into());
            }
        }
    }
    progress.say("clearing the cutover's record");
    // Read again: the bridge may have written its status while the rollout ran.
    let record = records
        .get(&e.record)
        .await
        .map_err(|x| format!("reading its WorkloadMigration {}: {x}", e.record))?;
    apply_record(client, e, &record, None, None, &[], opts.dry_run)
        .await
        .map_err(fail)?;
    let done: String = match (opts.dry_run, restored) {
        (true, _) => {
            "would restore the recorded template and clear the stage (server-side dry run passed)"
                .into()
        }
        (false, true) => "template restored exactly, rolled out, stage cleared".into(),
        (false, false) => "template already as recorded; stage cleared".into(),
    };
    Ok(match recreated.is_empty() {
        true => done,
        false => format!("re-created {}; {done}", recreated.join(", ")),
    })
}

/// Creates the pod-identity objects finalize deleted for this workload that are missing now
/// (identities first); returns what it created, as `kind ns/name`.
async fn recreate_removed(
    client: &Client,
    removed: &[Value],
    dry_run: bool,
) -> Result<Vec<String>, String> {
    let pp = PostParams {
        dry_run,
        ..Default::default()
    };
    let mut created = Vec::new();
    for m in crate::cutover::recreate_order(removed) {
        let (kind, ns, name) = crate::cutover::manifest_key(m);
        let plural = if kind == "AzureIdentity" {
            "azureidentities"
        } else {
            "azureidentitybindings"
        };
        let api = pod_identity_api(client, &ns, &kind, plural);
        let obj: DynamicObject =
            serde_json::from_value(m.clone()).map_err(|x| format!("{kind} {ns}/{name}: {x}"))?;
        match api.create(&pp, &obj).await {
            Ok(_) => created.push(format!("{kind} {ns}/{name}")),
            Err(kube::Error::Api(x)) if x.code == 409 => {}
            Err(x) => return Err(format!("re-creating {kind} {ns}/{name}: {x}")),
        }
    }
    Ok(created)
}

/// `podid cutover rollback` for these workloads. Unlike `switch` it goes on after a failure:
/// each workload is independent, and leaving more of them switched helps no one.
pub async fn rollback(client: &Client, entries: &[&PlanEntry], opts: &RunOptions) -> Vec<Outcome> {
    run_all(
        entries,
        opts,
        "rolled-back",
        false,
        |e, progress| async move { rollback_one(client, e, opts, &progress).await },
    )
    .await
}

/// The client ID the Workload ID webhook would inject for pods running as `ns/sa`: its
/// `azure.workload.identity/client-id` annotation. An error naming the ServiceAccount when it
/// is missing or lacks the annotation.
pub async fn client_id_of(client: &Client, ns: &str, sa: &str) -> Result<String, String> {
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    let found = api
        .get_opt(sa)
        .await
        .map_err(|x| format!("reading ServiceAccount {ns}/{sa}: {x}"))?
        .ok_or_else(|| {
            format!("its target ServiceAccount {ns}/{sa} does not exist yet (the bridge creates it; see `podid cutover prepare`)")
        })?;
    found
        .metadata
        .annotations
        .unwrap_or_default()
        .remove(WI_CLIENT_ID_ANNOTATION)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| {
            format!("its target ServiceAccount {ns}/{sa} has no {WI_CLIENT_ID_ANNOTATION} annotation: the webhook would inject no AZURE_CLIENT_ID, so nothing was changed (the bridge writes it; see `podid cutover prepare`)")
        })
}

/// How far the bridge has got with one workload: `Ok` when every credential is proven and the
/// target ServiceAccount carries the client ID, else what is missing and why.
async fn prepared(client: &Client, e: &PlanEntry) -> Result<String, String> {
    let records: Api<WorkloadMigration> = Api::namespaced(client.clone(), &e.namespace);
    let record = records
        .get_opt(&e.record)
        .await
        .map_err(|x| format!("reading its WorkloadMigration {}: {x}", e.record))?
        .ok_or("no WorkloadMigration yet: the bridge has not seen it")?;
    let status = record
        .status
        .ok_or("its WorkloadMigration has no status yet: the bridge has not finished its side")?;
    let unready: Vec<String> = status
        .credentials
        .iter()
        .filter(|c| !c.ready)
        .map(|c| format!("{} ({})", c.name, c.subject))
        .collect();
    let blocked: Vec<String> = status
        .conditions
        .iter()
        .filter(|c| (c.status == "True" && c.type_ == "Blocked") || c.status == "False")
        .map(|c| format!("{}: {} ({})", c.type_, c.message, c.reason))
        .collect();
    if status.credentials.is_empty() || !unready.is_empty() {
        let mut why = format!(
            "credentials proven {} (stage {})",
            status.proven.as_deref().unwrap_or("0/0"),
            status.stage.map_or("-", Stage::as_str)
        );
        if !unready.is_empty() {
            why += &format!("; not proven yet: {}", unready.join(", "));
        }
        if !blocked.is_empty() {
            why += &format!("; {}", blocked.join("; "));
        }
        return Err(why);
    }
    let target = status
        .target_service_account
        .clone()
        .or(e.target_service_account.clone())
        .ok_or("the record names no target ServiceAccount")?;
    let client_id = client_id_of(client, &e.namespace, &target).await?;
    Ok(format!(
        "credentials proven {}; ServiceAccount {target} annotated with client ID {client_id}",
        status.proven.as_deref().unwrap_or("-")
    ))
}

/// `podid cutover prepare`: the bridge of podid-operator builds each workload's ServiceAccount,
/// federated credentials and annotations and proves them with a token exchange; this waits
/// (up to `opts.timeout` in all) until every workload's record shows its credentials proven,
/// and says what is still unproven and why. It writes nothing; pods are untouched.
pub async fn prepare(client: &Client, entries: &[&PlanEntry], opts: &RunOptions) -> Vec<Outcome> {
    let multi = (!opts.quiet && std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .then(MultiProgress::new);
    let deadline = Instant::now() + opts.timeout;
    let mut pending: Vec<(&PlanEntry, Progress, String)> = entries
        .iter()
        .map(|e| {
            let p = Progress::new(multi.as_ref(), format!("{}/{}", e.namespace, e.workload()));
            (*e, p, String::new())
        })
        .collect();
    let mut outcomes = Vec::new();
    loop {
        let mut still = Vec::new();
        for (e, progress, last) in pending {
            let outcome = |result: &str, message: String| Outcome {
                namespace: e.namespace.clone(),
                workload: e.workload(),
                result: result.into(),
                message,
            };
            match prepared(client, e).await {
                Ok(m) => {
                    progress.done(&format!("prepared: {m}"));
                    outcomes.push(outcome("prepared", m));
                }
                Err(m) if opts.dry_run || Instant::now() >= deadline => {
                    progress.done(&format!("unproven: {m}"));
                    outcomes.push(outcome("unproven", m));
                }
                Err(m) => {
                    if m != last {
                        progress.say(&format!("waiting for the bridge: {m}"));
                    }
                    still.push((e, progress, m));
                }
            }
        }
        if still.is_empty() {
            break;
        }
        pending = still;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let order = |o: &Outcome| {
        entries
            .iter()
            .position(|e| e.namespace == o.namespace && e.workload() == o.workload)
    };
    outcomes.sort_by_key(order);
    outcomes
}

/// What `prepare --direct` needs: Azure, and the issuer as podid-operator would find it.
pub struct Direct {
    pub cloud: podid_azure::CloudConfig,
    pub credential: Arc<dyn podid_azure::TokenCredential>,
    /// Trusting any `--extra-ca-file`.
    pub http: reqwest::Client,
    pub oidc_issuer: Option<String>,
    pub aks_cluster_id: Option<String>,
    pub match_options: podid_crds::policy::MatchOptions,
}

/// `podid cutover prepare --direct`: one pass of podid-operator's bridge, here, over these
/// workloads only: the same decisions (`podid_operator::bridge`), the same writes
/// (ServiceAccounts, federated credentials through ARM, a proof of each by a real token
/// exchange, the records) and no deletion. With `dry_run` it writes nothing and returns what a
/// pass would write. Bounded by `timeout`.
pub async fn prepare_direct(
    client: &Client,
    entries: &[&PlanEntry],
    direct: &Direct,
    dry_run: bool,
    timeout: Duration,
) -> Result<Vec<Outcome>, Error> {
    use podid_operator::bridge_run::{BridgeAzure, BridgeSettings, production_bridge};
    let shutdown = tokio_util::sync::CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();
    let scope = entries
        .iter()
        .map(|e| (e.namespace.clone(), e.kind.clone(), e.name.clone()))
        .collect();
    let arm = podid_azure::Arm::new(
        &direct.cloud.endpoints.arm,
        direct.credential.clone(),
        direct.http.clone(),
    );
    let settings = BridgeSettings {
        issuer: None,
        tenant_id: None,
        match_options: direct.match_options,
        proof_attempts: 12,
        proof_interval: Duration::from_secs(2),
        serving: Default::default(),
        namespace: None,
        scope: Some(scope),
    };
    let metrics = podid_operator::metrics::Metrics::new();
    let (bridge, _) = production_bridge(
        client,
        BridgeAzure {
            cloud: &direct.cloud,
            credential: direct.credential.clone(),
            http: direct.http.clone(),
            arm: &arm,
        },
        direct.oidc_issuer.as_deref(),
        direct.aks_cluster_id.as_deref(),
        settings,
        &metrics,
        &shutdown,
    )
    .await?;
    let deadline = Instant::now() + timeout;
    tokio::time::timeout_at(deadline.into(), bridge.stores.ready())
        .await
        .map_err(|_| Error::Refused("the cluster's objects were not listed in time".into()))?;
    let outcome = |ns: &str, workload: String, result: &str, message: String| Outcome {
        namespace: ns.to_owned(),
        workload,
        result: result.into(),
        message,
    };
    if dry_run {
        let (issuer, plan, report) = bridge.decide().await;
        let mut out = Vec::new();
        if let Err(why) = issuer {
            return Err(Error::Refused(format!("nothing can be prepared: {why}")));
        }
        for w in &plan.service_accounts {
            let what = match (w.create, &w.client_id) {
                (true, Some(id)) => format!("would create it, annotated with client ID {id}"),
                (true, None) => "would create it".into(),
                (false, Some(id)) => format!("would annotate it with client ID {id}"),
                (false, None) => continue,
            };
            out.push(outcome(
                &w.namespace,
                format!("serviceaccount/{}", w.name),
                "dry-run",
                what,
            ));
        }
        for (identity, c) in &plan.put {
            out.push(outcome(
                "",
                format!("credential/{}", c.name),
                "dry-run",
                format!(
                    "would create it on {identity} (issuer {}, subject {})",
                    c.issuer, c.subject
                ),
            ));
        }
        if report.errors > 0 {
            out.push(outcome(
                "",
                "arm".into(),
                "failed",
                format!(
                    "{} identities' credentials could not be listed (see the log)",
                    report.errors
                ),
            ));
        }
        return Ok(out);
    }
    let report = tokio::time::timeout_at(deadline.into(), bridge.pass())
        .await
        .map_err(|_| {
            Error::Refused(format!(
                "the pass did not finish within {}s",
                timeout.as_secs()
            ))
        })?;
    tracing::info!(?report, "prepare --direct: bridge pass");
    Ok(Vec::new())
}

/// `rollback --remove-workload-id` for these rolled-back workloads: per workload, what
/// [`crate::cutover::workload_id_removal`] decides, deleted (credentials through `arm`, then the
/// ServiceAccount), or with `dry_run` only listed.
pub async fn remove_workload_id_side<F: podid_azure::FederatedCredentials>(
    client: &Client,
    entries: &[&PlanEntry],
    arm: &F,
    dry_run: bool,
) -> Vec<Outcome> {
    use std::collections::BTreeSet;
    let mut out = Vec::new();
    for e in entries {
        let outcome = |result: &str, message: String| Outcome {
            namespace: e.namespace.clone(),
            workload: e.workload(),
            result: result.into(),
            message,
        };
        let records: Api<WorkloadMigration> = Api::namespaced(client.clone(), &e.namespace);
        let pods: Api<Pod> = Api::namespaced(client.clone(), &e.namespace);
        let (records, pods) = match (
            records.list(&ListParams::default()).await,
            pods.list(&ListParams::default()).await,
        ) {
            (Ok(r), Ok(p)) => (r.items, p.items),
            (Err(x), _) | (_, Err(x)) => {
                out.push(outcome("failed", format!("reading records and pods: {x}")));
                continue;
            }
        };
        let sa_of = |p: &Pod| {
            p.spec
                .as_ref()
                .and_then(|s| s.service_account_name.clone())
                .unwrap_or_else(|| "default".into())
        };
        let live = pods
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none());
        let running_as: BTreeSet<String> = live.clone().map(sa_of).collect();
        let on_workload_id: BTreeSet<String> = live
            .filter(|p| {
                p.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(WI_USE_LABEL))
                    .map(String::as_str)
                    == Some("true")
            })
            .map(sa_of)
            .collect();
        let target = records
            .iter()
            .find(|r| r.metadata.name.as_deref() == Some(e.record.as_str()))
            .and_then(|r| r.status.as_ref())
            .and_then(|s| s.target_service_account.clone());
        let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), &e.namespace);
        let created_by_podid = match &target {
            Some(t) => sas.get_opt(t).await.ok().flatten().is_some_and(|sa| {
                sa.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(podid_operator::bridge_run::MANAGED_BY_LABEL))
                    .map(String::as_str)
                    == Some(podid_operator::bridge_run::MANAGED_BY)
            }),
            None => false,
        };
        let decided = crate::cutover::workload_id_removal(
            &e.namespace,
            &e.record,
            &crate::cutover::RemovalView {
                records: &records,
                on_workload_id: &on_workload_id,
                running_as: &running_as,
                created_by_podid,
            },
        );
        let mut done = Vec::new();
        let mut failed = Vec::new();
        for (identity, name) in &decided.credentials {
            if dry_run {
                done.push(format!("would delete credential {name}"));
                continue;
            }
            match arm.delete(identity, name).await {
                Ok(()) | Err(podid_azure::Error::Arm { status: 404, .. }) => {
                    done.push(format!("credential {name} deleted"))
                }
                Err(x) => failed.push(format!("deleting credential {name} on {identity}: {x}")),
            }
        }
        if let Some(sa) = &decided.service_account {
            let dp = kube::api::DeleteParams {
                dry_run,
                ..Default::default()
            };
            match sas.delete(sa, &dp).await {
                Ok(_) if dry_run => done.push(format!("would delete serviceaccount/{sa}")),
                Ok(_) => done.push(format!("serviceaccount/{sa} deleted")),
                Err(kube::Error::Api(x)) if x.code == 404 => {}
                Err(x) => failed.push(format!("deleting serviceaccount/{sa}: {x}")),
            }
        }
        // Its record goes too: the Workload ID side it describes is gone (podid-operator's
        // bridge, if running, writes it again for a workload on pod identity).
        if failed.is_empty() {
            let api: Api<WorkloadMigration> = Api::namespaced(client.clone(), &e.namespace);
            let dp = kube::api::DeleteParams {
                dry_run,
                ..Default::default()
            };
            match api.delete(&e.record, &dp).await {
                Ok(_) if dry_run => {
                    done.push(format!("would delete its WorkloadMigration {}", e.record))
                }
                Ok(_) => done.push(format!("WorkloadMigration {} deleted", e.record)),
                Err(kube::Error::Api(x)) if x.code == 404 => {}
                Err(x) => failed.push(format!("deleting its WorkloadMigration: {x}")),
            }
        }
        let kept: Vec<String> = decided
            .kept
            .iter()
            .map(|(what, why)| format!("kept {what}: {why}"))
            .collect();
        let message = done
            .into_iter()
            .chain(kept)
            .chain(failed.iter().cloned())
            .collect::<Vec<_>>();
        let result = match (failed.is_empty(), dry_run) {
            (false, _) => "failed",
            (true, true) => "dry-run",
            (true, false) => "removed",
        };
        let message = if message.is_empty() {
            "nothing of its Workload ID side to remove".to_owned()
        } else {
            message.join("; ")
        };
        out.push(outcome(result, message));
    }
    out
}

/// What `verify` needs for its token exchange.
#[derive(Clone)]
pub struct Exchange {
    pub http: reqwest::Client,
    /// Entra's authority (`https://login.microsoftonline.com/`).
    pub authority: url::Url,
    /// The tenant; `None`: the ServiceAccount's tenant-id annotation, else the record's.
    pub tenant_id: Option<String>,
    /// The resource a token is asked for.
    pub resource: String,
}

/// A ServiceAccount token for `ns/sa` with the exchange audience (TokenRequest, 10 minutes).
pub async fn exchange_token(client: &Client, ns: &str, sa: &str) -> Result<String, String> {
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    let tr: TokenRequest = serde_json::from_value(json!({
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
        "spec": {"audiences": [TOKEN_EXCHANGE_AUDIENCE], "expirationSeconds": 600}
    }))
    .map_err(|x| x.to_string())?;
    api.create_subresource::<TokenRequest, TokenRequest>("token", sa, &PostParams::default(), &tr)
        .await
        .map_err(|x| format!("TokenRequest for {ns}/{sa}: {x}"))?
        .status
        .map(|s| s.token)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| format!("TokenRequest for {ns}/{sa} returned no token"))
}

/// The pods of a rollout workload, once all are Running and Ready on the new template
/// (`serviceAccountName` `target` and the Workload ID label); else where they stand.
async fn ready_pods(
    client: &Client,
    e: &PlanEntry,
    obj: &Value,
    target: &str,
) -> Result<Vec<Pod>, String> {
    if let Rollout::Progressing(m) | Rollout::Failed(m) = rollout(&e.kind, obj) {
        return Err(format!("rollout not done: {m}"));
    }
    let want = match e.kind.as_str() {
        "DaemonSet" => obj
            .pointer("/status/desiredNumberScheduled")
            .and_then(Value::as_i64)
            .unwrap_or(0),
        _ => obj
            .pointer("/spec/replicas")
            .and_then(Value::as_i64)
            .unwrap_or(1),
    };
    let selector = obj
        .pointer("/spec/selector")
        .map(crate::cutover::selector_query)
        .unwrap_or_default();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &e.namespace);
    let list = pods
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(|x| format!("listing its pods: {x}"))?
        .items;
    let mut ready = Vec::new();
    for p in list
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
    {
        let name = p.metadata.name.clone().unwrap_or_default();
        let spec = p.spec.as_ref();
        let on_new = spec.and_then(|s| s.service_account_name.as_deref()) == Some(target)
            && p.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(WI_USE_LABEL))
                .is_some_and(|v| v == "true");
        if !on_new {
            return Err(format!("pod {name} still runs the old template"));
        }
        let status = p.status.as_ref();
        let running = status.and_then(|s| s.phase.as_deref()) == Some("Running");
        let is_ready = status
            .and_then(|s| s.conditions.as_ref())
            .into_iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        if !(running && is_ready) {
            return Err(format!("pod {name} is not Running and Ready yet"));
        }
        ready.push(p);
    }
    if (ready.len() as i64) < want {
        return Err(format!("{} of {want} pods Running and Ready", ready.len()));
    }
    Ok(ready)
}

/// A CronJob's next pod: a server-side dry-run create of a pod from its template, as the
/// webhook mutates it.
async fn next_run_pod(client: &Client, e: &PlanEntry, template: &Value) -> Result<Pod, String> {
    let mut meta = template.get("metadata").cloned().unwrap_or(json!({}));
    meta["generateName"] = format!("{}-verify-", e.name).into();
    let pod: Pod = serde_json::from_value(json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": meta, "spec": template.get("spec").cloned().unwrap_or(json!({}))}))
    .map_err(|x| format!("its template as a pod: {x}"))?;
    Api::<Pod>::namespaced(client.clone(), &e.namespace)
        .create(
            &PostParams {
                dry_run: true,
                ..Default::default()
            },
            &pod,
        )
        .await
        .map_err(|x| format!("a dry-run pod from its template: {x}"))
}

/// Verifies one switched workload; records `spec.stage: Verified` when it passes.
async fn verify_one(
    client: &Client,
    e: &PlanEntry,
    opts: &RunOptions,
    ex: &Exchange,
    progress: &Progress,
) -> Result<String, String> {
    let fail = |x: Error| x.to_string();
    let api = workload_api(client, e).map_err(fail)?;
    let records: Api<WorkloadMigration> = Api::namespaced(client.clone(), &e.namespace);
    let record = records
        .get(&e.record)
        .await
        .map_err(|x| format!("reading its WorkloadMigration {}: {x}", e.record))?;
    if record.spec.stage.is_none_or(|s| s < Stage::Switched) {
        return Err("not switched: run `podid cutover switch` first".into());
    }
    let start = Instant::now();
    let deadline = start + opts.timeout;
    // 1. Its pods Running and Ready on the new template.
    progress.say("checking its pods");
    let (pods, target, what) = loop {
        let obj = get_json(&api, &e.name).await.map_err(fail)?;
        let template = template_of(&e.kind, &obj)
            .cloned()
            .ok_or("the workload has no pod template")?;
        let target = template
            .pointer("/spec/serviceAccountName")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .unwrap_or("default")
            .to_owned();
        let labelled = template
            .pointer("/metadata/labels")
            .and_then(|l| l.get(WI_USE_LABEL))
            .is_some_and(|v| v == "true");
        if !labelled {
            return Err(format!(
                "its template lacks the label {WI_USE_LABEL}: \"true\" (changed after the switch?)"
            ));
        }
        if let Some(t) = e.target_service_account.as_deref().filter(|t| *t != target) {
            return Err(format!(
                "its template runs as ServiceAccount {target}, the plan says {t}"
            ));
        }
        let got = if template_kind(&e.kind) == TemplateKind::NextRun {
            next_run_pod(client, e, &template)
                .await
                .map(|p| (vec![p], "a dry-run pod of its next run".to_owned()))
        } else {
            ready_pods(client, e, &obj, &target).await.map(|p| {
                let n = p.len();
                (p, format!("{n} pod(s) Running and Ready"))
            })
        };
        match got {
            Ok((pods, what)) => break (pods, target, what),
            Err(m)
                if Instant::now() < deadline && template_kind(&e.kind) != TemplateKind::NextRun =>
            {
                progress.tick(&m);
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(m) => return Err(m),
        }
    };
    // 2. The webhook's environment and projected token in those pods.
    let client_id = client_id_of(client, &e.namespace, &target).await?;
    for p in &pods {
        let spec = serde_json::to_value(&p.spec).map_err(|x| x.to_string())?;
        let problems = injection_problems(&spec, Some(&client_id));
        if !problems.is_empty() {
            return Err(format!(
                "pod {}: the Workload ID webhook's injection is incomplete: {}",
                p.metadata
                    .name
                    .as_deref()
                    .or(p.metadata.generate_name.as_deref())
                    .unwrap_or_default(),
                problems.join("; ")
            ));
        }
    }
    // 3. A token exchange for its ServiceAccount.
    progress.say("exchanging a token of its ServiceAccount");
    let sa_tenant = Api::<ServiceAccount>::namespaced(client.clone(), &e.namespace)
        .get(&target)
        .await
        .ok()
        .and_then(|s| s.metadata.annotations)
        .and_then(|mut a| a.remove(WI_TENANT_ID_ANNOTATION));
    let status = record.status.clone().unwrap_or_default();
    let record_tenant = status
        .identities
        .iter()
        .find(|i| i.client_id == client_id && !i.tenant_id.is_empty())
        .or(status.identities.iter().find(|i| !i.tenant_id.is_empty()))
        .map(|i| i.tenant_id.clone());
    let tenant = ex
        .tenant_id
        .clone()
        .or(sa_tenant)
        .or(record_tenant)
        .ok_or("no tenant known: its ServiceAccount has no tenant-id annotation and its record no tenant; pass --tenant-id")?;
    let token = exchange_token(client, &e.namespace, &target).await?;
    let source = WorkloadIdentitySource {
        http: ex.http.clone(),
        authority: ex.authority.clone(),
        tenant_id: tenant.clone(),
        client_id: client_id.clone(),
        assertion: Arc::new(move || {
            let token = token.clone();
            async move { Ok::<_, TokenError>(token) }
        }),
        clock: Arc::new(SystemClock),
    };
    source
        .fetch(&ex.resource)
        .await
        .map_err(|x| format!("the token exchange for ServiceAccount {target} failed: {x}"))?;
    // 4. Recorded, so finalize can require it.
    if record.spec.stage == Some(Stage::Switched) {
        apply_record(
            client,
            e,
            &record,
            Some(Stage::Verified),
            record.spec.recorded_template.as_ref(),
            &record.spec.removed_pod_identity,
            opts.dry_run,
        )
        .await
        .map_err(fail)?;
    }
    Ok(format!(
        "{what} with the webhook's environment and token; ServiceAccount {target} exchanged a token as {client_id} in tenant {tenant}; verified in {:.1}s",
        start.elapsed().as_secs_f64()
    ))
}

/// `podid cutover verify` for these switched workloads. Goes on past a failure.
pub async fn verify(
    client: &Client,
    entries: &[&PlanEntry],
    opts: &RunOptions,
    ex: &Exchange,
) -> Vec<Outcome> {
    run_all(entries, opts, "verified", false, |e, progress| async move {
        verify_one(client, e, opts, ex, &progress).await
    })
    .await
}

/// Finalizes one verified workload: removes `aadpodidbinding` from its template, waits for the
/// rollout, records `spec.stage: Completed` (the recorded template stays, for rollback).
async fn finalize_one(
    client: &Client,
    e: &PlanEntry,
    opts: &RunOptions,
    progress: &Progress,
) -> Result<String, String> {
    let fail = |x: Error| x.to_string();
    let api = workload_api(client, e).map_err(fail)?;
    let records: Api<WorkloadMigration> = Api::namespaced(client.clone(), &e.namespace);
    let record = records
        .get(&e.record)
        .await
        .map_err(|x| format!("reading its WorkloadMigration {}: {x}", e.record))?;
    match record.spec.stage {
        Some(Stage::Verified | Stage::Completed) => {}
        _ => return Err("not verified: run `podid cutover verify` first".into()),
    }
    let obj = get_json(&api, &e.name).await.map_err(fail)?;
    let template = template_of(&e.kind, &obj)
        .cloned()
        .ok_or("the workload has no pod template")?;
    let patch = finalize_patch(&e.kind, &template);
    if let Some(patch) = &patch {
        progress.say(&format!("removing {POD_LABEL} from the template"));
        api.patch(&e.name, &write_params(opts.dry_run), &Patch::Merge(patch))
            .await
            .map_err(|x| format!("removing {POD_LABEL}: {x}"))?;
    }
    if opts.dry_run {
        return Ok(format!(
            "would remove {POD_LABEL} and record Completed (server-side dry run passed)"
        ));
    }
    progress.say("rolling out");
    let start = Instant::now();
    wait_rollout(&api, e, opts.timeout, progress).await?;
    if record.spec.stage != Some(Stage::Completed) {
        let record = records
            .get(&e.record)
            .await
            .map_err(|x| format!("reading its WorkloadMigration {}: {x}", e.record))?;
        apply_record(
            client,
            e,
            &record,
            Some(Stage::Completed),
            record.spec.recorded_template.as_ref(),
            &record.spec.removed_pod_identity,
            false,
        )
        .await
        .map_err(fail)?;
    }
    Ok(match patch {
        Some(_) => format!(
            "{POD_LABEL} removed, rolled out in {}s; Completed",
            start.elapsed().as_secs()
        ),
        None => format!("{POD_LABEL} already gone; Completed"),
    })
}

/// `podid cutover finalize` for these verified workloads. Goes on past a failure.
pub async fn finalize(client: &Client, entries: &[&PlanEntry], opts: &RunOptions) -> Vec<Outcome> {
    run_all(
        entries,
        opts,
        "completed",
        false,
        |e, progress| async move { finalize_one(client, e, opts, &progress).await },
    )
    .await
}

fn pod_identity_api(client: &Client, ns: &str, kind: &str, plural: &str) -> Api<DynamicObject> {
    let ar = ApiResource {
        group: podid_crds::GROUP.into(),
        version: podid_crds::VERSION.into(),
        api_version: format!("{}/{}", podid_crds::GROUP, podid_crds::VERSION),
        kind: kind.into(),
        plural: plural.into(),
    };
    Api::namespaced_with(client.clone(), ns, &ar)
}

/// Copies into each finalized workload's record the objects of `unused` it used, as they are
/// now, so rollback can re-create them: written before anything is deleted.
async fn record_removed(
    client: &Client,
    unused: &crate::cutover::Unused,
    done: &[&PlanEntry],
    dry_run: bool,
) -> Result<(), String> {
    for e in done {
        let mut added = Vec::new();
        for (kind, ns, name) in unused.used_by(e) {
            let plural = if kind == "AzureIdentity" {
                "azureidentities"
            } else {
                "azureidentitybindings"
            };
            let api = pod_identity_api(client, &ns, kind, plural);
            if let Some(o) = api
                .get_opt(&name)
                .await
                .map_err(|x| format!("reading {kind} {ns}/{name}: {x}"))?
            {
                let o = serde_json::to_value(o).map_err(|x| x.to_string())?;
                added.push(crate::cutover::removed_manifest(kind, &o));
            }
        }
        if added.is_empty() {
            continue;
        }
        let records: Api<WorkloadMigration> = Api::namespaced(client.clone(), &e.namespace);
        let record = records
            .get(&e.record)
            .await
            .map_err(|x| format!("reading its WorkloadMigration {}: {x}", e.record))?;
        let removed = crate::cutover::merge_removed(&record.spec.removed_pod_identity, added);
        if removed == record.spec.removed_pod_identity {
            continue;
        }
        apply_record(
            client,
            e,
            &record,
            record.spec.stage,
            record.spec.recorded_template.as_ref(),
            &removed,
            dry_run,
        )
        .await
        .map_err(|x| {
            format!(
                "recording what {}/{} used in its WorkloadMigration: {x}",
                e.namespace,
                e.workload()
            )
        })?;
    }
    Ok(())
}

/// Deletes what [`crate::cutover::unused_bindings`] found: each binding, then each identity,
/// once a copy of each is in the records of the finalized workloads (`done`) that used it.
pub async fn delete_bindings(
    client: &Client,
    unused: &crate::cutover::Unused,
    done: &[&PlanEntry],
    dry_run: bool,
) -> Vec<Outcome> {
    if let Err(message) = record_removed(client, unused, done, dry_run).await {
        // Nothing is deleted that rollback could not bring back.
        return vec![Outcome {
            namespace: String::new(),
            workload: "bindings".into(),
            result: "failed".into(),
            message: format!("{message}; nothing deleted"),
        }];
    }
    let dp = kube::api::DeleteParams {
        dry_run,
        ..Default::default()
    };
    let mut out = Vec::new();
    let targets = unused
        .bindings
        .iter()
        .map(|b| ("AzureIdentityBinding", "azureidentitybindings", b))
        .chain(
            unused
                .identities
                .iter()
                .map(|i| ("AzureIdentity", "azureidentities", i)),
        );
    for (kind, plural, (ns, name, why)) in targets {
        let api = pod_identity_api(client, ns, kind, plural);
        let (result, message) = match api.delete(name, &dp).await {
            Ok(_) if dry_run => ("dry-run".into(), format!("would delete: {why}")),
            Ok(_) => ("deleted".into(), why.clone()),
            Err(kube::Error::Api(e)) if e.code == 404 => ("deleted".into(), "already gone".into()),
            Err(x) => ("failed".into(), format!("deleting: {x}")),
        };
        out.push(Outcome {
            namespace: ns.clone(),
            workload: format!("{}/{name}", kind.to_ascii_lowercase()),
            result,
            message,
        });
    }
    for (ns, name, kind, why) in &unused.kept {
        out.push(Outcome {
            namespace: ns.clone(),
            workload: format!("{}/{name}", kind.to_ascii_lowercase()),
            result: "kept".into(),
            message: why.clone(),
        });
    }
    out
}
