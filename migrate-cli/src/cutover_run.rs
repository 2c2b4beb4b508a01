//! The cutover's live steps: the Workload ID webhook check, `switch` and `rollback`. Every step
//! reads the cluster first and writes only what is missing, so a rerun after an interruption
//! (Ctrl-C, SIGKILL, a lost connection) picks up where the last run stopped. Progress lives in
//! each workload's `WorkloadMigration` (`spec.stage`, `spec.recordedTemplate`, field manager
//! `podid-cutover`), never in a local file.

use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use podid_crds::cutover::{Rollout, TemplateChange, restore_patch, rollout, template_of};
use podid_crds::migration::{CUTOVER_MANAGER, Stage, WorkloadMigration};
use podid_crds::{WI_USE_LABEL, WI_WEBHOOK_NAME};
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

/// Writes the cutover's part of a record (`spec.stage`, `spec.recordedTemplate`) by
/// server-side apply. Every apply names all the fields the cutover keeps: a field left out is a
/// field removed.
async fn apply_record(
    client: &Client,
    e: &PlanEntry,
    resource_version: Option<String>,
    stage: Option<Stage>,
    recorded: Option<&Value>,
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
    let mut meta = json!({"name": e.record, "namespace": e.namespace});
    if let Some(rv) = resource_version {
        // A precondition: the record has not changed since it was read.
        meta["resourceVersion"] = rv.into();
    }
    let body = json!({"apiVersion": "podid.dev/v1alpha1", "kind": "WorkloadMigration",
                      "metadata": meta, "spec": spec});
    api.patch(
        &e.record,
        &PatchParams {
            force: false,
            ..PatchParams::apply(CUTOVER_MANAGER)
        }
        .with_dry_run_if(dry_run),
        &Patch::Apply(&body),
    )
    .await?;
    Ok(())
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
    // 1. The template from before the first change, written once and never overwritten.
    let recorded = match &record.spec.recorded_template {
        Some(t) => t.clone(),
        None => template.clone(),
    };
    if record.spec.recorded_template.is_none() || record.spec.stage != Some(Stage::Switched) {
        progress.say("recording the current template");
        apply_record(
            client,
            e,
            record.metadata.resource_version.clone(),
            Some(Stage::Switched),
            Some(&recorded),
            opts.dry_run,
        )
        .await
        .map_err(fail)?;
    }
    // 2. The template change (nothing when already applied).
    let change = TemplateChange::for_template(&template, &target);
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

/// Runs `one` over `entries`, at most `max_parallel` at once, in order; after the first
/// failure no further workload is started (those are reported `not-started`).
async fn run_all<'a, F, Fut>(
    entries: &'a [&'a PlanEntry],
    opts: &RunOptions,
    ok_result: &str,
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
            let fut = one(e, progress);
            running.push(async move { (*e, fut.await) });
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
                stopped = true;
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
    run_all(entries, opts, "switched", |e, progress| async move {
        let r = switch_one(client, e, opts, &progress).await;
        progress.done(match &r {
            Ok(m) => m,
            Err(m) => m,
        });
        r
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
    apply_record(
        client,
        e,
        record.metadata.resource_version.clone(),
        None,
        None,
        opts.dry_run,
    )
    .await
    .map_err(fail)?;
    Ok(match (opts.dry_run, restored) {
        (true, _) => {
            "would restore the recorded template and clear the stage (server-side dry run passed)"
                .into()
        }
        (false, true) => "template restored exactly, rolled out, stage cleared".into(),
        (false, false) => "template already as recorded; stage cleared".into(),
    })
}

/// `podid cutover rollback` for these workloads. Unlike `switch` it goes on after a failure:
/// each workload is independent, and leaving more of them switched helps no one.
pub async fn rollback(client: &Client, entries: &[&PlanEntry], opts: &RunOptions) -> Vec<Outcome> {
    let mut out = Vec::new();
    for chunk in entries.chunks(opts.max_parallel.max(1)) {
        out.extend(
            run_all(chunk, opts, "rolled-back", |e, progress| async move {
                let r = rollback_one(client, e, opts, &progress).await;
                progress.done(match &r {
                    Ok(m) => m,
                    Err(m) => m,
                });
                r
            })
            .await,
        );
    }
    out
}
