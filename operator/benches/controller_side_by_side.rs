//! Benchmark 2 of docs/performance.md, "Controller" (not a test; CI builds it, never runs it):
//! podid-operator against the original MIC (aad-pod-identity v1.8.17, built by
//! tests/peers/build.sh), in one run, on one control plane. `bench/controller.sh` runs it
//! (`cargo bench -p podid-operator --bench controller_side_by_side`).
//!
//! The scene, made once: `PODID_BENCH_NODES` (100) nodes (Node objects with AKS names and
//! provider IDs; nothing runs on them, the pods stay Pending, as neither controller minds) in
//! `PODID_BENCH_SCALE_SETS` (5) scale sets, `PODID_BENCH_IDENTITIES` (200) user-assigned identities, each with its
//! AzureIdentity and one binding, and `PODID_BENCH_PODS` (5,000) pods with `spec.nodeName` set
//! (no scheduler), each matching exactly one binding; a binding's pods lie on two neighbouring
//! scale sets, so every scale set needs 2/5 of the identities (80).
//!
//! Per controller, in turn (podid, the original; `PODID_BENCH_ROUNDS` (1) rounds, the order
//! swapped each round): a fresh Azure emulator whose scale sets hold no identity, no
//! AzureAssignedIdentity in the cluster; the controller starts as a child process (the
//! original's flags; podid with `--bridge=false`, like for like) and the clock runs until every
//! record is `Assigned` and every scale set holds exactly the identities its pods need. Every
//! scale-set PATCH takes `PODID_BENCH_PATCH_MS` (2,500 ms), every other ARM call
//! `PODID_BENCH_ARM_MS` (100 ms), as on Azure, so that batching shows. Then churn:
//! `PODID_BENCH_CHURN_PERCENT` (10) % of the pods replaced (deleted, and created again under a
//! new name on the same node) and `PODID_BENCH_CHURN_BINDINGS` (5) bindings pointed at other
//! identities; the clock runs again. A phase that has not converged after
//! `PODID_BENCH_TIMEOUT_SECS` (240) is reported as such (its time is then a lower bound).
//!
//! Measured per phase: the time to converge; ARM reads (GET) and writes (PATCH, PUT, DELETE)
//! counted by the emulator once no call has come for 3 s; the controller's CPU seconds and peak
//! RSS from /proc; the API server requests it made, from the API server's audit log by user
//! agent (`mic/…` and `podid-operator/…`).
//!
//! Prints the table and the goals (converge ≥ 5× faster, no more ARM writes, ≤ ½ the peak RSS),
//! writes `bench/results/controller.json` and `.svg` (`PODID_BENCH_OUT`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Endpoints, Node, Pod, ServiceAccount};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use podid_azure_emulator::{Emulator, Fault, IdentitySeed, Seed, Settings};
use podid_crds::{
    AssignedIdentityState, AzureAssignedIdentity, AzureIdentity, AzureIdentityBinding,
};
use podid_testkit::bench::{
    AuditCounts, ChartRow, Panel, ProcUsage, Series, bar_chart, env_usize, median,
};
use podid_testkit::builders::obj;
use podid_testkit::{Cluster, NodePool};
use serde_json::{Value, json};

#[path = "../tests/common/process.rs"]
#[allow(dead_code)]
mod process;
use process::{Running, cloud_config, free_port};

const IDENTITY_RG: &str = "rg-identities";
const CONTROLLER_APP: (&str, &str) = ("11111111-2222-3333-4444-555555555555", "mic-secret");

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Which {
    Podid,
    Original,
}

impl Which {
    fn label(self) -> &'static str {
        match self {
            Which::Podid => "podid",
            Which::Original => "mic",
        }
    }
    /// The starts of its requests' User-Agent: the original MIC sets its own
    /// (`aad-pod-identity/MIC/<version>/…`); `mic/` is client-go's default, for a build without it.
    fn user_agents(self) -> &'static [&'static str] {
        match self {
            Which::Podid => &["podid-operator/"],
            Which::Original => &["aad-pod-identity/", "mic/"],
        }
    }
}

/// One pod of the scene.
#[derive(Clone, Debug)]
struct ScenePod {
    name: String,
    binding: usize,
    pool: usize,
    node: String,
}

/// What is in the cluster, and what a converged controller leaves.
struct Scene {
    ns: String,
    pools: Vec<NodePool>,
    identities: usize,
    pods: Vec<ScenePod>,
    /// binding → identity it names now.
    binding_identity: Vec<usize>,
    /// How many times pods were replaced (new names each time).
    generation: usize,
}

fn identity_name(i: usize) -> String {
    format!("id-{i:03}")
}

fn identity_id(sub: &str, i: usize) -> String {
    format!(
        "/subscriptions/{sub}/resourcegroups/{IDENTITY_RG}/providers/Microsoft.ManagedIdentity/userAssignedIdentities/{}",
        identity_name(i)
    )
}

impl Scene {
    fn new(ns: String, pools: Vec<NodePool>, identities: usize, pods: usize) -> Self {
        let sets = pools.len();
        let pods = (0..pods)
            .map(|k| {
                let (binding, j) = (k % identities, k / identities);
                // Half of a binding's pods on its own scale set, half on the next one.
                let pool = if j % 2 == 0 {
                    binding % sets
                } else {
                    (binding + 1) % sets
                };
                let node = pools[pool].node_name((j * 7 + binding) % pools[pool].count);
                ScenePod {
                    name: format!("app-{binding:03}-{j:04}"),
                    binding,
                    pool,
                    node,
                }
            })
            .collect();
        Self {
            ns,
            pools,
            identities,
            pods,
            binding_identity: (0..identities).collect(),
            generation: 0,
        }
    }

    /// Names of the records a converged controller leaves: `<pod>-<namespace>-<identity>`.
    fn want_records(&self) -> BTreeSet<String> {
        self.pods
            .iter()
            .map(|p| {
                format!(
                    "{}-{}-{}",
                    p.name,
                    self.ns,
                    identity_name(self.binding_identity[p.binding])
                )
            })
            .collect()
    }

    /// Per scale set, the (lower-cased) identity ids its pods need.
    fn want_on_scale_sets(&self, sub: &str) -> Vec<Vec<String>> {
        let mut sets = vec![BTreeSet::new(); self.pools.len()];
        for p in &self.pods {
            sets[p.pool].insert(identity_id(sub, self.binding_identity[p.binding]).to_lowercase());
        }
        sets.into_iter().map(|s| s.into_iter().collect()).collect()
    }

    fn pod_json(&self, p: &ScenePod) -> Pod {
        obj(json!({
            "metadata": {"name": p.name, "labels": {"aadpodidbinding": format!("sel-{:03}", p.binding)}},
            "spec": {"nodeName": p.node, "automountServiceAccountToken": false,
                     "terminationGracePeriodSeconds": 0,
                     "containers": [{"name": "c", "image": "registry.invalid/app:1"}]}
        }))
    }
}

/// What one phase (from empty, or after churn) of one controller measured.
#[derive(Clone, Debug, Default)]
struct Phase {
    converged: bool,
    seconds: f64,
    /// Records Assigned and wanted / wanted, when it did not converge.
    progress: String,
    arm: BTreeMap<String, u64>,
    cpu_seconds: f64,
    peak_rss_mib: f64,
    api: BTreeMap<String, u64>,
}

impl Phase {
    fn arm_writes(&self) -> u64 {
        self.arm
            .iter()
            .filter(|(route, _)| {
                let (method, name) = route.split_once(' ').unwrap_or_default();
                matches!(method, "PATCH" | "PUT" | "DELETE")
                    || (method == "POST" && name != "token")
            })
            .map(|(_, n)| n)
            .sum()
    }
    fn arm_reads(&self) -> u64 {
        self.arm
            .iter()
            .filter(|(route, _)| route.starts_with("GET "))
            .map(|(_, n)| n)
            .sum()
    }
    fn api_requests(&self) -> u64 {
        self.api.values().sum()
    }
    fn json(&self) -> Value {
        json!({
            "converged": self.converged, "seconds": self.seconds, "progress": self.progress,
            "armWrites": self.arm_writes(), "armReads": self.arm_reads(), "armCalls": self.arm,
            "cpuSeconds": self.cpu_seconds, "peakRssMiB": self.peak_rss_mib,
            "apiRequests": self.api_requests(), "apiRequestsByVerb": self.api,
        })
    }
}

/// A controller running against its emulator.
struct Live {
    which: Which,
    controller: Running,
    pid: u32,
    emu: Emulator,
    vmss: Vec<String>,
}

/// Where a phase starts: its clock, the audit log's length, the controller's CPU seconds.
#[derive(Clone, Copy)]
struct Mark {
    t0: Instant,
    audit_from: u64,
    cpu_before: f64,
}

/// One controller's run: from empty, then after churn (absent when the first did not converge).
struct RunResult {
    which: Which,
    empty: Phase,
    churn: Option<Phase>,
}

struct Knobs {
    patch_ms: u64,
    arm_ms: u64,
    lro_polls: u32,
    timeout: Duration,
    churn_percent: usize,
    churn_bindings: usize,
}

struct Bench {
    cluster: &'static Cluster,
    client: kube::Client,
    records: reflector::Store<AzureAssignedIdentity>,
    audit_log: PathBuf,
    knobs: Knobs,
    out_dir: PathBuf,
}

impl Bench {
    /// No records, no leader-election locks: as before any controller ran.
    async fn clean(&self) -> anyhow::Result<()> {
        let api: Api<AzureAssignedIdentity> = Api::all(self.client.clone());
        let list = api.list_metadata(&ListParams::default()).await?;
        futures::stream::iter(list.items.into_iter().map(|r| {
            let client = self.client.clone();
            async move {
                let ns = r.metadata.namespace.clone().unwrap_or_default();
                let name = r.metadata.name.clone().unwrap_or_default();
                let api: Api<AzureAssignedIdentity> = Api::namespaced(client, &ns);
                if r.metadata
                    .finalizers
                    .as_ref()
                    .is_some_and(|f| !f.is_empty())
                {
                    api.patch(
                        &name,
                        &PatchParams::default(),
                        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
                    )
                    .await?;
                }
                match api.delete(&name, &DeleteParams::default()).await {
                    Err(kube::Error::Api(e)) if e.is_not_found() => anyhow::Ok(()),
                    Err(e) => Err(e.into()),
                    Ok(_) => Ok(()),
                }
            }
        }))
        .buffer_unordered(32)
        .try_collect::<Vec<()>>()
        .await?;
        let dp = DeleteParams::default();
        let _ = Api::<Endpoints>::namespaced(self.client.clone(), "default")
            .delete("aad-pod-identity-mic", &dp)
            .await;
        let _ = Api::<Lease>::namespaced(self.client.clone(), "default")
            .delete("podid-operator", &dp)
            .await;
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.records.state().is_empty() {
            if Instant::now() > deadline {
                bail!("{} records left after cleaning", self.records.state().len());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(())
    }

    /// A fresh emulator: the identities exist, the scale sets hold none; ARM answers slowly.
    async fn emulator(&self, scene: &Scene) -> anyhow::Result<(Emulator, Vec<String>)> {
        let emu = Emulator::start(Settings {
            lro_polls: self.knobs.lro_polls,
            ..Default::default()
        })
        .await?;
        emu.add_app(CONTROLLER_APP.0, Some(CONTROLLER_APP.1), None);
        emu.seed(&Seed {
            identities: (0..scene.identities)
                .map(|i| IdentitySeed {
                    resource_group: IDENTITY_RG.into(),
                    name: identity_name(i),
                    client_id: Some(format!("0000cccc-0000-0000-0000-{i:012}")),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
        .map_err(anyhow::Error::msg)?;
        let vmss = scene
            .pools
            .iter()
            .map(|p| emu.add_scale_set(&p.resource_group, &p.scale_set, p.count as u32))
            .collect();
        // The first matching fault applies: scale-set writes, then every other ARM call (not
        // the token endpoint).
        emu.inject(Fault {
            route: "PATCH vmss".into(),
            latency_ms: Some(self.knobs.patch_ms),
            ..Default::default()
        });
        for route in ["GET *", "PUT *", "PATCH *", "DELETE *"] {
            emu.inject(Fault {
                route: route.into(),
                latency_ms: Some(self.knobs.arm_ms),
                ..Default::default()
            });
        }
        Ok((emu, vmss))
    }

    fn start(&self, which: Which, emu: &Emulator, scene: &Scene, dir: &std::path::Path) -> Running {
        let (azure_json, env_file, ca) =
            cloud_config(dir, emu, &scene.pools[0].resource_group, CONTROLLER_APP);
        let probe = free_port().to_string();
        let prom = free_port().to_string();
        let log = self.out_dir.join(format!("{}.log", which.label()));
        let cmd = match which {
            Which::Original => {
                let bin = podid_testkit::peer_binary("mic").expect("checked at start");
                let mut cmd = Command::new(bin);
                cmd.arg(format!("--cloudconfig={}", azure_json.display()))
                    .arg("--logtostderr")
                    .arg(format!(
                        "--kubeconfig={}",
                        self.cluster.kubeconfig().display()
                    ))
                    .arg(format!("--http-probe-port={probe}"))
                    .arg(format!("--prometheus-port={prom}"))
                    .env("MIC_POD_NAMESPACE", "default")
                    .env("AZURE_ENVIRONMENT_FILEPATH", &env_file)
                    .env("SSL_CERT_FILE", &ca);
                cmd
            }
            Which::Podid => {
                let mut cmd = Command::new(env!("CARGO_BIN_EXE_podid-operator"));
                cmd.arg(format!("--cloudconfig={}", azure_json.display()))
                    .arg("--logtostderr")
                    .arg("--bridge=false")
                    .arg(format!("--http-probe-port={probe}"))
                    .arg(format!("--prometheus-port={prom}"))
                    .arg(format!("--extra-ca-file={}", ca.display()))
                    .env("KUBECONFIG", self.cluster.kubeconfig())
                    .env("MIC_POD_NAMESPACE", "default")
                    .env("AZURE_ENVIRONMENT_FILEPATH", &env_file)
                    .env("RUST_LOG", "info");
                cmd
            }
        };
        Running::spawn(cmd, log)
    }

    /// Waits until the records and the scale sets are what `scene` needs, then until ARM has
    /// been quiet for 3 s; measures the phase since `t0`.
    async fn converge(&self, live: &mut Live, scene: &Scene, mark: Mark) -> anyhow::Result<Phase> {
        let Live {
            which,
            controller,
            pid,
            emu,
            vmss,
        } = live;
        let (which, pid) = (*which, *pid);
        let Mark {
            t0,
            audit_from,
            cpu_before,
        } = mark;
        let want_records = scene.want_records();
        let want_sets = scene.want_on_scale_sets(&emu.subscription_id());
        let deadline = t0 + self.knobs.timeout;
        let mut phase = Phase::default();
        loop {
            controller.assert_alive(which.label());
            let sets_ok = vmss.iter().zip(&want_sets).all(|(id, want)| {
                let mut on = emu.assigned_identities(id);
                on.sort();
                &on == want
            });
            let state = self.records.state();
            let assigned: BTreeSet<String> = state
                .iter()
                .filter(|r| {
                    r.status
                        .as_ref()
                        .is_some_and(|s| s.status == AssignedIdentityState::Assigned)
                })
                .filter_map(|r| r.metadata.name.clone())
                .collect();
            if sets_ok && state.len() == want_records.len() && assigned == want_records {
                phase.converged = true;
                phase.seconds = t0.elapsed().as_secs_f64();
                break;
            }
            if Instant::now() > deadline {
                phase.seconds = t0.elapsed().as_secs_f64();
                let sets_right = vmss
                    .iter()
                    .zip(&want_sets)
                    .filter(|(id, want)| {
                        let mut on = emu.assigned_identities(id);
                        on.sort();
                        &on == *want
                    })
                    .count();
                phase.progress = format!(
                    "{} of {} records Assigned ({} records), {sets_right} of {} scale sets right",
                    assigned.intersection(&want_records).count(),
                    want_records.len(),
                    state.len(),
                    vmss.len()
                );
                eprintln!(
                    "  {} did not converge in {:.0} s: {}",
                    which.label(),
                    phase.seconds,
                    phase.progress
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Calls that land after convergence (a trailing pass) count too.
        let mut stable = emu.calls();
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_secs(3)).await;
            let now = emu.calls();
            if now == stable {
                break;
            }
            stable = now;
        }
        phase.arm = stable;
        let usage = ProcUsage::of(pid).context("controller gone")?;
        phase.cpu_seconds = usage.cpu.as_secs_f64() - cpu_before;
        phase.peak_rss_mib = usage.peak_rss_kib as f64 / 1024.0;
        let audit = AuditCounts::read(&self.audit_log, audit_from)?;
        phase.api = BTreeMap::new();
        for ua in which.user_agents() {
            for (verb, n) in audit.verbs(ua) {
                *phase.api.entry(verb).or_default() += n;
            }
        }
        Ok(phase)
    }

    /// Replaces `churn_percent` % of the pods and points `churn_bindings` bindings at other
    /// identities.
    async fn churn(&self, scene: &mut Scene) -> anyhow::Result<()> {
        scene.generation += 1;
        let every = (100 / self.knobs.churn_percent.max(1)).max(1);
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &scene.ns);
        let mut replaced = Vec::new();
        for (k, p) in scene.pods.iter_mut().enumerate() {
            if k % every == scene.generation % every {
                let old = p.name.clone();
                p.name = format!(
                    "{}-r{}",
                    old.split("-r").next().unwrap_or(&old),
                    scene.generation
                );
                replaced.push((old, p.clone()));
            }
        }
        let scene_ref = &*scene;
        futures::stream::iter(replaced.iter().map(|(old, new)| {
            let pods = pods.clone();
            async move {
                pods.delete(old, &DeleteParams::default().grace_period(0))
                    .await?;
                pods.create(&PostParams::default(), &scene_ref.pod_json(new))
                    .await?;
                anyhow::Ok(())
            }
        }))
        .buffer_unordered(32)
        .try_collect::<Vec<()>>()
        .await?;
        let half = scene.identities / 2;
        for b in 0..self.knobs.churn_bindings.min(scene.identities) {
            scene.binding_identity[b] = (b + half + 1) % scene.identities;
        }
        self.write_bindings(scene).await
    }

    /// Points every binding at the identity `scene` says.
    async fn write_bindings(&self, scene: &Scene) -> anyhow::Result<()> {
        let bindings: Api<AzureIdentityBinding> = Api::namespaced(self.client.clone(), &scene.ns);
        for b in 0..self.knobs.churn_bindings.min(scene.identities) {
            bindings
                .patch(
                    &format!("b-{b:03}"),
                    &PatchParams::default(),
                    &Patch::Merge(json!({"spec": {"azureIdentity": identity_name(scene.binding_identity[b])}})),
                )
                .await?;
        }
        Ok(())
    }

    async fn run(&self, which: Which, scene: &mut Scene) -> anyhow::Result<RunResult> {
        self.clean().await?;
        scene.binding_identity = (0..scene.identities).collect();
        self.write_bindings(scene).await?;
        let (emu, vmss) = self.emulator(scene).await?;
        let dir = tempfile::tempdir()?;
        let mark = Mark {
            t0: Instant::now(),
            audit_from: std::fs::metadata(&self.audit_log)?.len(),
            cpu_before: 0.0,
        };
        let controller = self.start(which, &emu, scene, dir.path());
        let pid = controller.pid();
        let mut live = Live {
            which,
            controller,
            pid,
            emu,
            vmss,
        };
        let empty = self.converge(&mut live, scene, mark).await?;
        print_phase(which, "from empty", &empty);
        let churn = if empty.converged {
            live.emu.reset_calls();
            let mark = Mark {
                t0: Instant::now(),
                audit_from: std::fs::metadata(&self.audit_log)?.len(),
                cpu_before: ProcUsage::of(pid)
                    .context("controller gone")?
                    .cpu
                    .as_secs_f64(),
            };
            self.churn(scene).await?;
            let p = self.converge(&mut live, scene, mark).await?;
            print_phase(which, "after churn", &p);
            Some(p)
        } else {
            None
        };
        live.controller.stop();
        Ok(RunResult {
            which,
            empty,
            churn,
        })
    }
}

fn print_phase(which: Which, name: &str, p: &Phase) {
    eprintln!(
        "  {}: {name} {:.1} s{}, ARM writes {} reads {}, API requests {}, CPU {:.1} s, peak RSS {:.0} MiB",
        which.label(),
        p.seconds,
        if p.converged { "" } else { " (not converged)" },
        p.arm_writes(),
        p.arm_reads(),
        p.api_requests(),
        p.cpu_seconds,
        p.peak_rss_mib
    );
}

/// The pools' nodes as AKS names them, with their `providerID` (all either controller reads of
/// a node). Nothing runs on them: the pods stay Pending, which neither controller looks at
/// (only a finished pod needs no identity), and no kubelet stand-in rewrites pod status under
/// the controllers' watches.
async fn create_nodes(client: &kube::Client, pools: &[NodePool]) -> anyhow::Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let all: Vec<(String, String, String)> = pools
        .iter()
        .flat_map(|pool| {
            (0..pool.count).map(|i| {
                (
                    pool.node_name(i),
                    pool.provider_id(i),
                    pool.scale_set.clone(),
                )
            })
        })
        .collect();
    futures::stream::iter(all.into_iter().map(|(name, provider_id, pool)| {
        let nodes = nodes.clone();
        async move {
            let node: Node = obj(json!({
                "metadata": {"name": name, "labels": {
                    "kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                    "kubernetes.azure.com/agentpool": pool}},
                "spec": {"providerID": provider_id}
            }));
            match nodes.create(&PostParams::default(), &node).await {
                Err(kube::Error::Api(e)) if e.code == 409 => anyhow::Ok(()),
                r => r.map(|_| ()).with_context(|| format!("node {name}")),
            }
        }
    }))
    .buffer_unordered(32)
    .try_collect::<Vec<()>>()
    .await?;
    Ok(())
}

/// Creates the pods, 32 at a time.
async fn create_pods(client: &kube::Client, scene: &Scene) -> anyhow::Result<()> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), &scene.ns);
    futures::stream::iter(scene.pods.iter().map(|p| {
        let pods = pods.clone();
        async move {
            pods.create(&PostParams::default(), &scene.pod_json(p))
                .await
                .with_context(|| format!("pod {}", p.name))?;
            anyhow::Ok(())
        }
    }))
    .buffer_unordered(32)
    .try_collect::<Vec<()>>()
    .await?;
    Ok(())
}

/// The identities and their bindings (selector `sel-<i>`), 32 at a time.
async fn create_identities(client: &kube::Client, scene: &Scene, sub: &str) -> anyhow::Result<()> {
    let identities: Api<AzureIdentity> = Api::namespaced(client.clone(), &scene.ns);
    let bindings: Api<AzureIdentityBinding> = Api::namespaced(client.clone(), &scene.ns);
    futures::stream::iter((0..scene.identities).map(|i| {
        let (identities, bindings) = (identities.clone(), bindings.clone());
        async move {
            identities
                .create(
                    &PostParams::default(),
                    &obj(json!({
                        "apiVersion": "aadpodidentity.k8s.io/v1", "kind": "AzureIdentity",
                        "metadata": {"name": identity_name(i)},
                        "spec": {"type": 0, "resourceID": identity_id(sub, i),
                                 "clientID": format!("0000cccc-0000-0000-0000-{i:012}")}
                    })),
                )
                .await?;
            bindings
                .create(
                    &PostParams::default(),
                    &obj(json!({
                        "apiVersion": "aadpodidentity.k8s.io/v1", "kind": "AzureIdentityBinding",
                        "metadata": {"name": format!("b-{i:03}")},
                        "spec": {"azureIdentity": identity_name(i), "selector": format!("sel-{i:03}")}
                    })),
                )
                .await?;
            anyhow::Ok(())
        }
    }))
    .buffer_unordered(32)
    .try_collect::<Vec<()>>()
    .await?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let pods = env_usize("PODID_BENCH_PODS", 5_000);
    let nodes = env_usize("PODID_BENCH_NODES", 100);
    let sets = env_usize("PODID_BENCH_SCALE_SETS", 5).max(1);
    let identities = env_usize("PODID_BENCH_IDENTITIES", 200).max(1);
    let rounds = env_usize("PODID_BENCH_ROUNDS", 1).max(1);
    let knobs = Knobs {
        patch_ms: env_usize("PODID_BENCH_PATCH_MS", 2_500) as u64,
        arm_ms: env_usize("PODID_BENCH_ARM_MS", 100) as u64,
        lro_polls: env_usize("PODID_BENCH_LRO_POLLS", 1) as u32,
        timeout: Duration::from_secs(env_usize("PODID_BENCH_TIMEOUT_SECS", 240) as u64),
        churn_percent: env_usize("PODID_BENCH_CHURN_PERCENT", 10),
        churn_bindings: env_usize("PODID_BENCH_CHURN_BINDINGS", 5),
    };
    let out = PathBuf::from(std::env::var("PODID_BENCH_OUT").unwrap_or_else(|_| {
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../bench/results/controller.json"
        )
        .into()
    }));
    let only = std::env::var("PODID_BENCH_ONLY").unwrap_or_default();
    let sides: Vec<Which> = match only.as_str() {
        "" => vec![Which::Podid, Which::Original],
        "podid" => vec![Which::Podid],
        "mic" => vec![Which::Original],
        other => bail!("PODID_BENCH_ONLY={other:?}: say podid or mic, or leave it unset for both"),
    };
    // Fail at once, and say how to build it, when the original is missing.
    if sides.contains(&Which::Original) {
        podid_testkit::peer_binary("mic").context("the benchmark needs the original MIC")?;
    }
    let started = Instant::now();
    let work = tempfile::tempdir()?;
    let audit_log = work.path().join("audit.log");
    // SAFETY: no other thread yet; the control plane reads it when it starts.
    unsafe { std::env::set_var(podid_testkit::AUDIT_LOG_ENV, &audit_log) };
    let out_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("controller_side_by_side");
    std::fs::create_dir_all(&out_dir)?;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let cluster = Cluster::shared();
    let (results, scene) = rt.block_on(async {
        let t = Instant::now();
        let per_pool = nodes.div_ceil(sets).max(1);
        let pools: Vec<NodePool> = (0..sets)
            .map(|p| NodePool::aks(&format!("bench{p}"), per_pool))
            .collect();
        let ns = cluster.namespace("ctl-bench").await;
        let client = ns.client.clone();
        create_nodes(&client, &pools).await?;
        // Admission wants the namespace's default ServiceAccount (no controller-manager here).
        Api::<ServiceAccount>::namespaced(client.clone(), &ns.name)
            .create(&PostParams::default(), &obj(json!({"metadata": {"name": "default"}})))
            .await?;
        let mut scene = Scene::new(ns.name.clone(), pools, identities, pods);
        // The subscription is the emulator's default, the same for every emulator.
        let sub = Settings::default().subscription_id;
        create_identities(&client, &scene, &sub).await?;
        create_pods(&client, &scene).await?;
        eprintln!(
            "scene: {pods} pods on {} nodes in {sets} scale sets, {identities} identities and bindings, made in {:.0} s",
            per_pool * sets,
            t.elapsed().as_secs_f64()
        );
        let (reader, writer) = reflector::store();
        let records = reflector(
            writer,
            watcher(Api::<AzureAssignedIdentity>::all(client.clone()), watcher::Config::default()),
        )
        .default_backoff()
        .for_each(|_| futures::future::ready(()));
        tokio::spawn(records);
        reader.wait_until_ready().await?;
        let bench = Bench {
            cluster,
            client,
            records: reader,
            audit_log,
            knobs,
            out_dir,
        };
        let mut results = Vec::new();
        for round in 0..rounds {
            let mut order = sides.clone();
            if round % 2 == 1 {
                order.reverse();
            }
            for which in order {
                eprintln!("round {}: {}", round + 1, which.label());
                results.push(bench.run(which, &mut scene).await?);
            }
        }
        bench.clean().await?;
        drop(ns);
        anyhow::Ok((results, (scene.pods.len(), scene.pools.len())))
    })?;
    drop(rt);
    podid_testkit::stop();
    report(
        &results,
        scene,
        rounds,
        started.elapsed(),
        &out,
        pods,
        nodes,
        identities,
    )
}

/// Medians over the rounds of one controller.
struct Summary {
    empty_s: f64,
    empty_converged: bool,
    churn_s: Option<f64>,
    arm_writes: f64,
    arm_reads: f64,
    api: f64,
    cpu: f64,
    rss: f64,
    churn_writes: Option<f64>,
    empty_cpu: f64,
    churn_cpu: Option<f64>,
    empty_rss: f64,
}

fn summarise(results: &[RunResult], which: Which) -> Summary {
    let runs: Vec<&RunResult> = results.iter().filter(|r| r.which == which).collect();
    let m = |f: &dyn Fn(&RunResult) -> f64| median(runs.iter().map(|r| f(r)).collect());
    let churns: Vec<&Phase> = runs.iter().filter_map(|r| r.churn.as_ref()).collect();
    let both =
        |f: &dyn Fn(&Phase) -> f64| m(&|r| f(&r.empty) + r.churn.as_ref().map(f).unwrap_or(0.0));
    Summary {
        empty_s: m(&|r| r.empty.seconds),
        empty_converged: runs.iter().all(|r| r.empty.converged),
        churn_s: (churns.len() == runs.len())
            .then(|| median(churns.iter().map(|p| p.seconds).collect())),
        churn_writes: (churns.len() == runs.len())
            .then(|| median(churns.iter().map(|p| p.arm_writes() as f64).collect())),
        empty_cpu: m(&|r| r.empty.cpu_seconds),
        churn_cpu: (churns.len() == runs.len())
            .then(|| median(churns.iter().map(|p| p.cpu_seconds).collect())),
        empty_rss: m(&|r| r.empty.peak_rss_mib),
        arm_writes: m(&|r| r.empty.arm_writes() as f64),
        arm_reads: both(&|p| p.arm_reads() as f64),
        api: both(&|p| p.api_requests() as f64),
        cpu: both(&|p| p.cpu_seconds),
        rss: m(&|r| {
            r.churn.as_ref().map_or(r.empty.peak_rss_mib, |c| {
                c.peak_rss_mib.max(r.empty.peak_rss_mib)
            })
        }),
    }
}

#[allow(clippy::too_many_arguments)]
fn report(
    results: &[RunResult],
    (pods, sets): (usize, usize),
    rounds: usize,
    took: Duration,
    out: &std::path::Path,
    want_pods: usize,
    nodes: usize,
    identities: usize,
) -> anyhow::Result<()> {
    let p = summarise(results, Which::Podid);
    let o = summarise(results, Which::Original);
    let fmt_s = |s: f64, ok: bool| {
        if ok {
            format!("{s:.1}")
        } else {
            format!(">{s:.0}")
        }
    };
    println!();
    println!(
        "controller: {pods} pods, {nodes} nodes in {sets} scale sets, {identities} identities (median of {rounds} round(s))"
    );
    println!(
        "{:<36} {:>12} {:>12} {:>16}",
        "", "podid", "original MIC", "ratio"
    );
    println!(
        "{:<36} {:>12} {:>12} {:>16}",
        "converge from empty, s",
        fmt_s(p.empty_s, p.empty_converged),
        fmt_s(o.empty_s, o.empty_converged),
        format!(
            "{}{:.1}× faster",
            if o.empty_converged { "" } else { "≥" },
            o.empty_s / p.empty_s
        )
    );
    match (p.churn_s, o.churn_s) {
        (Some(a), Some(b)) => println!(
            "{:<36} {:>12.1} {:>12.1} {:>16}",
            "converge after churn, s",
            a,
            b,
            format!("{:.1}× faster", b / a)
        ),
        _ => println!(
            "{:<36} {:>12} {:>12}",
            "converge after churn, s",
            fmt_opt(p.churn_s),
            fmt_opt(o.churn_s)
        ),
    }
    let row = |name: &str, a: f64, b: f64, d: usize| {
        println!(
            "{:<36} {:>12.*} {:>12.*} {:>16}",
            name,
            d,
            a,
            d,
            b,
            format!("{:.2}×", a / b)
        )
    };
    row("ARM writes, from empty", p.arm_writes, o.arm_writes, 0);
    if let (Some(a), Some(b)) = (p.churn_writes, o.churn_writes) {
        row("ARM writes, churn", a, b, 0);
    }
    row("ARM reads (both phases)", p.arm_reads, o.arm_reads, 0);
    row("API server requests (both phases)", p.api, o.api, 0);
    row("CPU seconds (both phases)", p.cpu, o.cpu, 1);
    row("peak RSS, MiB", p.rss, o.rss, 1);
    let goals = json!({
        "convergeAtLeast5xFaster": p.empty_converged && o.empty_s / p.empty_s >= 5.0,
        "churnAtLeast5xFaster": matches!((p.churn_s, o.churn_s), (Some(a), Some(b)) if b / a >= 5.0),
        "noMoreArmWrites": p.arm_writes <= o.arm_writes
            && p.churn_writes.zip(o.churn_writes).is_none_or(|(a, b)| a <= b),
        "atMostHalfPeakRss": p.rss <= o.rss / 2.0,
    });
    for (k, v) in goals.as_object().into_iter().flatten() {
        println!("goal {k}: {}", if v == true { "met" } else { "NOT met" });
    }
    let report = json!({
        "benchmark": "controller",
        "rounds": rounds,
        "machine": {"cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)},
        "scene": {"pods": want_pods, "nodes": nodes, "scaleSets": sets, "identities": identities},
        "runs": results.iter().map(|r| json!({
            "controller": r.which.label(),
            "fromEmpty": r.empty.json(),
            "afterChurn": r.churn.as_ref().map(Phase::json),
        })).collect::<Vec<_>>(),
        "goals": goals,
        "benchmarkSeconds": took.as_secs_f64(),
    });
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(out, serde_json::to_string_pretty(&report)? + "\n")?;
    let svg = out.with_extension("svg");
    std::fs::write(&svg, chart(&p, &o))?;
    println!("wrote {} and {}", out.display(), svg.display());
    Ok(())
}

fn fmt_opt(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.1}"))
}

fn chart(p: &Summary, o: &Summary) -> String {
    let series = [
        Series {
            name: "podid-operator".into(),
            color: "#2b6cb0",
        },
        Series {
            name: "original MIC".into(),
            color: "#c05621",
        },
    ];
    let panels = [
        Panel {
            title: "converge, s".into(),
            decimals: 1,
        },
        Panel {
            title: "ARM writes".into(),
            decimals: 0,
        },
        Panel {
            title: "controller CPU, s".into(),
            decimals: 1,
        },
        Panel {
            title: "peak RSS so far, MiB".into(),
            decimals: 0,
        },
    ];
    let rows = vec![
        ChartRow {
            name: "from empty".into(),
            values: vec![
                vec![
                    Some(p.empty_s),
                    Some(p.arm_writes),
                    Some(p.empty_cpu),
                    Some(p.empty_rss),
                ],
                vec![
                    Some(o.empty_s),
                    Some(o.arm_writes),
                    Some(o.empty_cpu),
                    Some(o.empty_rss),
                ],
            ],
        },
        ChartRow {
            name: "after churn".into(),
            values: vec![
                vec![
                    p.churn_s,
                    p.churn_writes,
                    p.churn_cpu,
                    p.churn_s.map(|_| p.rss),
                ],
                vec![
                    o.churn_s,
                    o.churn_writes,
                    o.churn_cpu,
                    o.churn_s.map(|_| o.rss),
                ],
            ],
        },
    ];
    bar_chart(&series, &panels, &rows)
}
