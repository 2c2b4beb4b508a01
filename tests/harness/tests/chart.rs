//! The Helm chart deploy/charts/podid, as users install it: every values profile renders with
//! the real `helm` (built by tests/cluster/build.sh --helm), deploy/manifests/ is exactly that
//! output (the drift check), the rendered objects are accepted by the real API server
//! server-side (dry run, then for real), each component's ServiceAccount may do what it needs
//! and nothing else under each switch, and the kubenet NET_RAW policy rejects and admits pods as
//! documented.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::{Api, PostParams};
use podid_testkit::Cluster;
use podid_testkit::builders::obj;
use podid_testkit::prereq::skip;
use serde_json::json;

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
const OPERATOR: &str = "podid-operator";
const AGENT: &str = "podid-nmi";

/// The tests of this binary share one API server and the chart's cluster-scoped names (one
/// install per cluster): they take turns.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn root() -> PathBuf {
    PathBuf::from(ROOT)
}

/// The helm binary, or None after reporting the skip (a failure under CI=true).
fn helm(test: &str) -> Option<PathBuf> {
    match podid_testkit::helm_binary() {
        Ok(p) => Some(p),
        Err(e) => {
            skip(
                test,
                &format!("helm not built ({e}): run tests/cluster/build.sh --helm"),
            );
            None
        }
    }
}

fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(text)
    }
}

/// `helm template` of the chart into `namespace` with `--set` pairs, on Kubernetes `kube`.
fn template(helm: &Path, namespace: &str, kube: &str, set: &[&str]) -> String {
    let mut cmd = Command::new(helm);
    cmd.arg("template")
        .arg("podid")
        .arg(root().join("deploy/charts/podid"))
        .args(["--namespace", namespace, "--kube-version", kube]);
    for s in set {
        cmd.args(["--set", s]);
    }
    run(&mut cmd).unwrap_or_else(|e| panic!("helm template {set:?}: {e}"))
}

/// Server-side apply of `yaml` (a dry run first): the API server validates every object.
fn apply(cluster: &Cluster, yaml: &str, what: &str) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("objects.yaml");
    std::fs::write(&file, yaml).unwrap();
    for dry in [true, false] {
        let mut cmd = cluster.kubectl().unwrap();
        cmd.args([
            "apply",
            "--server-side",
            "--force-conflicts",
            "--field-manager=podid-chart-test",
            "-f",
        ])
        .arg(&file);
        if dry {
            cmd.arg("--dry-run=server");
        }
        run(&mut cmd)
            .unwrap_or_else(|e| panic!("{what}: kubectl apply --server-side (dry run {dry}): {e}"));
    }
}

fn kinds(yaml: &str) -> Vec<String> {
    yaml.lines()
        .filter_map(|l| l.strip_prefix("kind: "))
        .map(str::to_owned)
        .collect()
}

/// Stand-ins for CRDs other projects install (Gatekeeper's generated constraint kind, the
/// Prometheus Operator's ServiceMonitor), so objects of theirs that the chart renders can be
/// applied: any spec is accepted, apiVersion and kind must be theirs.
fn foreign_crds(cluster: &Cluster) {
    let crd = |group: &str, version: &str, kind: &str, plural: &str| {
        json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": format!("{plural}.{group}")},
            "spec": {"group": group, "scope": if group == "monitoring.coreos.com" { "Namespaced" } else { "Cluster" },
                "names": {"kind": kind, "plural": plural, "singular": kind.to_lowercase(), "listKind": format!("{kind}List")},
                "versions": [{"name": version, "served": true, "storage": true,
                    "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}]}})
    };
    let docs = [
        crd(
            "constraints.gatekeeper.sh",
            "v1beta1",
            "K8sPSPCapabilities",
            "k8spspcapabilities",
        ),
        crd(
            "monitoring.coreos.com",
            "v1",
            "ServiceMonitor",
            "servicemonitors",
        ),
    ];
    let yaml = docs
        .iter()
        .map(|d| serde_yaml::to_string(d).unwrap())
        .collect::<Vec<_>>()
        .join("---\n");
    apply(cluster, &yaml, "stand-in CRDs");
    for name in [
        "k8spspcapabilities.constraints.gatekeeper.sh",
        "servicemonitors.monitoring.coreos.com",
    ] {
        let mut cmd = cluster.kubectl().unwrap();
        cmd.args([
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            &format!("crd/{name}"),
        ]);
        run(&mut cmd).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

#[test]
fn manifests_are_the_charts_output_and_the_crds_are_crdgens() {
    let Some(helm) = helm("chart::manifests_are_the_charts_output_and_the_crds_are_crdgens") else {
        return;
    };
    let out = tempfile::tempdir().unwrap();
    run(Command::new(root().join("deploy/render.sh"))
        .arg(out.path())
        .env("PODID_HELM", &helm))
    .unwrap_or_else(|e| panic!("deploy/render.sh: {e}"));
    let names = |dir: &Path| {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    let shipped = root().join("deploy/manifests");
    assert_eq!(
        names(&shipped),
        names(out.path()),
        "deploy/manifests/ has one file per deploy/profiles/ file: run deploy/render.sh"
    );
    for name in names(out.path()) {
        let want = std::fs::read_to_string(out.path().join(&name)).unwrap();
        let have = std::fs::read_to_string(shipped.join(&name)).unwrap();
        assert!(
            want == have,
            "deploy/manifests/{name} is not the chart's output: run deploy/render.sh"
        );
    }
    // The chart's copies of the generated CRDs.
    for f in ["crds.yaml", "crds-pre-1.31.yaml"] {
        assert!(
            std::fs::read_to_string(root().join("crds").join(f)).unwrap()
                == std::fs::read_to_string(root().join("deploy/charts/podid/files").join(f))
                    .unwrap(),
            "deploy/charts/podid/files/{f} differs from crds/{f}: copy it"
        );
    }
}

/// The chart picks the CRD variant by the server's version and keeps CRDs on uninstall.
#[test]
fn crds_follow_the_kubernetes_version() {
    let Some(helm) = helm("chart::crds_follow_the_kubernetes_version") else {
        return;
    };
    let on_130 = template(&helm, "default", "1.30.0", &[]);
    let on_131 = template(&helm, "default", "1.31.0", &[]);
    for (rendered, selectable) in [(&on_130, false), (&on_131, true)] {
        assert_eq!(
            kinds(rendered)
                .iter()
                .filter(|k| *k == "CustomResourceDefinition")
                .count(),
            5,
            "the five CRDs"
        );
        assert_eq!(rendered.contains("selectableFields"), selectable);
        assert!(rendered.contains("helm.sh/resource-policy: keep"));
    }
    let without = template(&helm, "default", "1.31.0", &["crds.install=false"]);
    assert!(!kinds(&without).contains(&"CustomResourceDefinition".to_owned()));
    // Below the floor the chart refuses (Chart.yaml kubeVersion).
    let mut cmd = Command::new(&helm);
    cmd.arg("template")
        .arg("podid")
        .arg(root().join("deploy/charts/podid"))
        .args(["--kube-version", "1.29.0"]);
    let refused = run(&mut cmd).expect_err("1.29 refused");
    assert!(refused.contains(">=1.30.0-0"), "{refused}");
}

#[tokio::test]
async fn every_profile_applies_server_side() {
    let Some(helm) = helm("chart::every_profile_applies_server_side") else {
        return;
    };
    let _turn = SERIAL.lock().await;
    let cluster = Cluster::shared_async().await;
    foreign_crds(cluster);
    // The shipped manifests, as `kubectl apply -f deploy/manifests/<profile>.yaml` users run.
    for entry in std::fs::read_dir(root().join("deploy/manifests")).unwrap() {
        let path = entry.unwrap().path();
        let yaml = std::fs::read_to_string(&path).unwrap();
        apply(cluster, &yaml, &path.display().to_string());
    }
    // The chart with everything on, CRDs included (the server's version: 1.31 or later), into
    // another namespace; and the original chart's values a user may carry over.
    let mut ns = cluster.kubectl().unwrap();
    let _ = run(ns.args(["create", "namespace", "podid-system"]));
    let everything = template(
        &helm,
        "podid-system",
        "1.37.0",
        &[
            "federated.enabled=true",
            "federated.identityServing=federated-with-fallback",
            "netRawPolicy.enabled=true",
            "netRawPolicy.gatekeeper=true",
            "serviceMonitor.enabled=true",
            "rbac.createUserFacingClusterRoles=true",
            "nmi.watchSecrets=true",
            "images.nmi.iptables=legacy",
            "adminsecret.cloud=AzurePublicCloud",
            "adminsecret.subscriptionID=sub",
            "adminsecret.resourceGroup=rg",
            "adminsecret.vmType=vmss",
            "adminsecret.tenantID=tenant",
            "adminsecret.clientID=app",
            "adminsecret.clientSecret=pw",
            "mic.leaderElection.namespace=kube-system",
            "mic.customCloud.enabled=true",
            "forceNamespaced=true",
            "azureIdentities.web.type=0",
            "azureIdentities.web.resourceID=/subscriptions/s/resourcegroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/web",
            "azureIdentities.web.clientID=00000000-0000-0000-0000-00000000000a",
            "azureIdentities.web.binding.name=web-binding",
            "azureIdentities.web.binding.selector=web",
        ],
    );
    for kind in [
        "CustomResourceDefinition",
        "Secret",
        "PodDisruptionBudget",
        "ServiceMonitor",
        "K8sPSPCapabilities",
        "AzureIdentity",
        "AzureIdentityBinding",
    ] {
        assert!(kinds(&everything).contains(&kind.to_owned()), "{kind}");
    }
    assert!(everything.contains("add: [\"NET_ADMIN\", \"NET_RAW\"]"));
    apply(cluster, &everything, "the chart with every switch on");
}

/// `kubectl auth can-i` (a SubjectAccessReview) for a ServiceAccount.
fn can(cluster: &Cluster, sa: (&str, &str), verb: &str, what: &str, ns: Option<&str>) -> bool {
    let mut cmd = cluster.kubectl().unwrap();
    cmd.args(["auth", "can-i", verb])
        .args(what.split(' '))
        .args(["--as", &format!("system:serviceaccount:{}:{}", sa.0, sa.1)]);
    match ns {
        Some(ns) => cmd.args(["-n", ns]),
        None => cmd.arg("-A"),
    };
    let out = cmd.output().unwrap();
    match String::from_utf8_lossy(&out.stdout).trim() {
        "yes" => true,
        "no" => false,
        other => panic!("kubectl auth can-i {verb} {what}: {other:?}"),
    }
}

#[derive(Clone)]
struct Expect<'a> {
    sa: &'a str,
    verb: &'a str,
    what: &'a str,
    /// None: cluster-wide (`-A`); Some(""): the release namespace.
    ns: Option<&'a str>,
    allowed: bool,
}

const fn yes<'a>(sa: &'a str, verb: &'a str, what: &'a str, ns: Option<&'a str>) -> Expect<'a> {
    Expect {
        sa,
        verb,
        what,
        ns,
        allowed: true,
    }
}

const fn no<'a>(sa: &'a str, verb: &'a str, what: &'a str, ns: Option<&'a str>) -> Expect<'a> {
    Expect {
        sa,
        verb,
        what,
        ns,
        allowed: false,
    }
}

const HERE: Option<&str> = Some("");

#[tokio::test]
async fn each_component_may_do_what_it_needs_and_no_more_per_switch() {
    let Some(helm) = helm("chart::each_component_may_do_what_it_needs_and_no_more_per_switch")
    else {
        return;
    };
    let _turn = SERIAL.lock().await;
    let cluster = Cluster::shared_async().await;
    // What every operator install needs, and what no install grants.
    let operator_always = [
        yes(OPERATOR, "create", "leases", HERE),
        yes(OPERATOR, "update", "leases/podid-operator", HERE),
        yes(OPERATOR, "get", "leases/podid-operator", HERE),
        no(OPERATOR, "update", "leases/other", HERE),
        yes(
            OPERATOR,
            "get",
            "endpoints/aad-pod-identity-mic",
            Some("default"),
        ),
        no(OPERATOR, "get", "endpoints/other", Some("default")),
        no(OPERATOR, "get", "secrets", None),
        no(OPERATOR, "create", "pods", None),
        no(OPERATOR, "update", "nodes", None),
        no(
            OPERATOR,
            "update",
            "azureidentities.aadpodidentity.k8s.io",
            None,
        ),
        no(OPERATOR, "patch", "deployments.apps", None),
        no(OPERATOR, "create", "configmaps", None),
        no(OPERATOR, "create", "customresourcedefinitions", None),
    ];
    let controller = |on: bool| {
        [
            Expect {
                allowed: on,
                ..yes(OPERATOR, "list", "nodes", None)
            },
            Expect {
                allowed: on,
                ..yes(
                    OPERATOR,
                    "create",
                    "azureassignedidentities.aadpodidentity.k8s.io",
                    None,
                )
            },
            Expect {
                allowed: on,
                ..yes(
                    OPERATOR,
                    "delete",
                    "azureassignedidentities.aadpodidentity.k8s.io",
                    None,
                )
            },
            Expect {
                allowed: on,
                ..yes(OPERATOR, "create", "events.events.k8s.io", None)
            },
        ]
    };
    // Managed mode's controller: nodes read, managed identities patched, no assignment records.
    let managed_controller = [
        yes(OPERATOR, "list", "nodes", None),
        yes(
            OPERATOR,
            "patch",
            "azureidentities.aadpodidentity.k8s.io",
            None,
        ),
        yes(OPERATOR, "create", "events.events.k8s.io", None),
        Expect {
            allowed: false,
            ..yes(
                OPERATOR,
                "create",
                "azureassignedidentities.aadpodidentity.k8s.io",
                None,
            )
        },
    ];
    let bridge = |on: bool| {
        [
            Expect {
                allowed: on,
                ..yes(OPERATOR, "list", "deployments.apps", None)
            },
            Expect {
                allowed: on,
                ..yes(OPERATOR, "list", "cronjobs.batch", None)
            },
            Expect {
                allowed: on,
                ..yes(OPERATOR, "create", "serviceaccounts", None)
            },
            Expect {
                allowed: on,
                ..yes(OPERATOR, "patch", "serviceaccounts", None)
            },
            Expect {
                allowed: on,
                ..yes(
                    OPERATOR,
                    "create",
                    "serviceaccounts --subresource=token",
                    None,
                )
            },
            Expect {
                allowed: on,
                ..yes(OPERATOR, "create", "workloadmigrations.podid.dev", None)
            },
            Expect {
                allowed: on,
                ..yes(
                    OPERATOR,
                    "patch",
                    "workloadmigrations.podid.dev --subresource=status",
                    None,
                )
            },
            // Its own per-identity ServiceAccounts, in its namespace only.
            Expect {
                allowed: on,
                ..yes(OPERATOR, "delete", "serviceaccounts", HERE)
            },
            no(OPERATOR, "delete", "serviceaccounts", Some("default")),
        ]
    };
    let agent_always = [
        yes(AGENT, "list", "pods", None),
        yes(
            AGENT,
            "watch",
            "azureidentities.aadpodidentity.k8s.io",
            None,
        ),
        yes(
            AGENT,
            "watch",
            "azurepodidentityexceptions.aadpodidentity.k8s.io",
            None,
        ),
        no(AGENT, "create", "pods", None),
        no(AGENT, "list", "nodes", None),
        no(AGENT, "delete", "secrets", None),
        no(
            AGENT,
            "update",
            "azureassignedidentities.aadpodidentity.k8s.io",
            None,
        ),
        no(AGENT, "create", "events", None),
    ];
    let standard_agent = |on: bool| {
        [Expect {
            allowed: on,
            ..yes(
                AGENT,
                "watch",
                "azureassignedidentities.aadpodidentity.k8s.io",
                None,
            )
        }]
    };
    let secrets = |get: bool, watch: bool| {
        [
            Expect {
                allowed: get,
                ..yes(AGENT, "get", "secrets", None)
            },
            Expect {
                allowed: watch,
                ..yes(AGENT, "list", "secrets", None)
            },
            Expect {
                allowed: watch,
                ..yes(AGENT, "watch", "secrets", None)
            },
        ]
    };
    let federated = |on: bool| {
        [
            Expect {
                allowed: on,
                ..yes(AGENT, "create", "serviceaccounts --subresource=token", None)
            },
            Expect {
                allowed: on,
                ..yes(AGENT, "watch", "workloadmigrations.podid.dev", None)
            },
            no(AGENT, "create", "workloadmigrations.podid.dev", None),
            no(AGENT, "create", "serviceaccounts", None),
        ]
    };

    let cases: Vec<(&str, Vec<&str>, Vec<Expect>)> = vec![
        (
            "standard",
            vec![],
            [
                &operator_always[..],
                &controller(true),
                &bridge(true),
                &agent_always,
                &standard_agent(true),
                &secrets(true, false),
                &federated(false),
            ]
            .concat(),
        ),
        (
            "standard-no-bridge",
            vec!["bridge.enabled=false"],
            [
                &operator_always[..],
                &controller(true),
                &bridge(false),
                &agent_always,
                &standard_agent(true),
            ]
            .concat(),
        ),
        (
            "managed",
            vec!["operationMode=managed"],
            [
                &operator_always[..],
                &managed_controller,
                &bridge(true),
                &agent_always,
                &standard_agent(false),
            ]
            .concat(),
        ),
        (
            "secrets-watched",
            vec!["nmi.watchSecrets=true", "mic.enabled=false"],
            [&agent_always[..], &secrets(true, true)].concat(),
        ),
        (
            "no-secrets",
            vec!["rbac.allowAccessToSecrets=false", "mic.enabled=false"],
            [&agent_always[..], &secrets(false, false)].concat(),
        ),
        (
            "federated",
            vec!["federated.enabled=true", "mic.enabled=false"],
            [&agent_always[..], &federated(true), &secrets(true, false)].concat(),
        ),
    ];
    for (case, set, expects) in cases {
        // Its own namespace: every binding names its ServiceAccount with the namespace, so what
        // an earlier case left grants nothing here.
        let ns = format!("podid-rbac-{case}");
        let _ = run(cluster
            .kubectl()
            .unwrap()
            .args(["create", "namespace", &ns]));
        let mut set = set.clone();
        set.push("crds.install=false");
        let yaml = template(&helm, &ns, "1.37.0", &set);
        apply(cluster, &yaml, case);
        for e in &expects {
            let where_ = e.ns.map(|n| if n.is_empty() { ns.as_str() } else { n });
            assert_eq!(
                can(cluster, (&ns, e.sa), e.verb, e.what, where_),
                e.allowed,
                "{case}: {} {} {} {} in {}",
                e.sa,
                if e.allowed { "may" } else { "may not" },
                e.verb,
                e.what,
                where_.unwrap_or("any namespace")
            );
        }
    }

    // Managed mode without the bridge still runs podid-operator: it keeps the managed identities
    // on the node pools.
    let yaml = template(
        &helm,
        "default",
        "1.37.0",
        &[
            "operationMode=managed",
            "bridge.enabled=false",
            "crds.install=false",
        ],
    );
    assert!(
        yaml.contains("kind: Deployment") && yaml.contains("name: podid-operator"),
        "{yaml}"
    );
    assert!(!yaml.contains("name: podid-operator-bridge"), "{yaml}");
}

/// A pod with these containers (`(name, securityContext)`), as JSON.
fn pod(name: &str, ns: &str, sa: Option<&str>, containers: &[(&str, serde_json::Value)]) -> Pod {
    let cs: Vec<_> = containers
        .iter()
        .map(|(n, sc)| json!({"name": n, "image": "registry.invalid/app:1", "securityContext": sc}))
        .collect();
    // No controller manager makes `default` ServiceAccounts here: each pod names one.
    let spec = json!({"containers": cs, "serviceAccountName": sa.unwrap_or("app")});
    obj(json!({"metadata": {"name": name, "namespace": ns}, "spec": spec}))
}

/// Creates `pod` (a server-side dry run: admission runs in full), the refusal message if any.
async fn admit(client: &Client, pod: &Pod) -> Result<(), String> {
    let ns = pod.metadata.namespace.clone().unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let pp = PostParams {
        dry_run: true,
        ..Default::default()
    };
    match pods.create(&pp, pod).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) => Err(format!("{}: {}", e.code, e.message)),
        Err(e) => panic!("not an API answer: {e}"),
    }
}

#[tokio::test]
async fn the_net_raw_policy_rejects_pods_keeping_net_raw_with_a_clear_message() {
    let _turn = SERIAL.lock().await;
    let cluster = Cluster::shared_async().await;
    let manifest = root().join("deploy/manifests/podid-net-raw-policy.yaml");
    apply(
        cluster,
        &std::fs::read_to_string(&manifest).unwrap(),
        "podid-net-raw-policy.yaml",
    );
    // The agent's account (its pods are exempt by it), as the agent's manifest makes it.
    apply(
        cluster,
        &std::fs::read_to_string(root().join("deploy/manifests/podid-nmi.yaml")).unwrap(),
        "podid-nmi.yaml",
    );
    let ns = cluster.namespace("netraw").await;
    let client = ns.client.clone();
    let keeps = json!({});
    let drop_raw = json!({"capabilities": {"drop": ["NET_RAW"]}});
    let drop_all = json!({"capabilities": {"drop": ["ALL"]}});
    for n in [ns.name.as_str(), "kube-system"] {
        let _ = run(cluster
            .kubectl()
            .unwrap()
            .args(["create", "serviceaccount", "app", "-n", n]));
    }

    // The policy is in force once the API server has loaded it (bounded wait, not a sleep).
    let deadline = Instant::now() + Duration::from_secs(60);
    let bad = pod("keeps", &ns.name, None, &[("app", keeps.clone())]);
    let refusal = loop {
        match admit(&client, &bad).await {
            Err(m) if m.contains("podid-drop-net-raw") => break m,
            Err(m) => panic!("refused, not by the policy: {m}"),
            Ok(()) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(250)).await
            }
            Ok(()) => panic!("a pod keeping NET_RAW is still admitted after 60 s"),
        }
    };
    assert!(refusal.starts_with("403"), "{refusal}");
    for part in [
        "ValidatingAdmissionPolicy 'podid-drop-net-raw'",
        "containers app keep the NET_RAW capability",
        "kubenet",
        "drop: [\"NET_RAW\"] (or [\"ALL\"])",
    ] {
        assert!(refusal.contains(part), "{part:?} in {refusal}");
    }

    // Dropping NET_RAW, or ALL, in every container is admitted.
    admit(
        &client,
        &pod("drops-raw", &ns.name, None, &[("app", drop_raw.clone())]),
    )
    .await
    .expect("drops NET_RAW");
    admit(
        &client,
        &pod(
            "drops-all",
            &ns.name,
            None,
            &[("app", drop_all.clone()), ("side", drop_raw.clone())],
        ),
    )
    .await
    .expect("drops ALL");
    // Every container counts, and adding NET_RAW back keeps it.
    let m = admit(
        &client,
        &pod(
            "one-keeps",
            &ns.name,
            None,
            &[("app", drop_all.clone()), ("sidecar", keeps.clone())],
        ),
    )
    .await
    .expect_err("a sidecar keeps NET_RAW");
    assert!(m.contains("containers sidecar keep"), "{m}");
    let readds = json!({"capabilities": {"drop": ["ALL"], "add": ["NET_RAW"]}});
    admit(&client, &pod("readds", &ns.name, None, &[("app", readds)]))
        .await
        .expect_err("drops ALL, adds NET_RAW back");
    let mut init = pod("init-keeps", &ns.name, None, &[("app", drop_all.clone())]);
    init.spec.as_mut().unwrap().init_containers = Some(vec![obj(
        json!({"name": "setup", "image": "registry.invalid/setup:1"}),
    )]);
    let m = admit(&client, &init)
        .await
        .expect_err("an init container keeps NET_RAW");
    assert!(m.contains("containers setup keep"), "{m}");

    // kube-system is exempt, and so is the agent itself (its ServiceAccount in its namespace),
    // but not a pod elsewhere that borrows the agent's ServiceAccount name.
    admit(
        &client,
        &pod("system", "kube-system", None, &[("app", keeps.clone())]),
    )
    .await
    .expect("kube-system is exempt");
    // (Bounded wait: an earlier test of this binary may have installed the same policy for
    // another namespace, and the API server reloads it shortly after this apply.)
    let agent = pod(
        "agent",
        "default",
        Some(AGENT),
        &[("podid-nmi", keeps.clone())],
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while let Err(m) = admit(&client, &agent).await {
        assert!(Instant::now() < deadline, "the agent is exempt: {m}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let mut sa = cluster.kubectl().unwrap();
    run(sa.args(["create", "serviceaccount", AGENT, "-n", &ns.name])).unwrap();
    admit(
        &client,
        &pod("impostor", &ns.name, Some(AGENT), &[("app", keeps)]),
    )
    .await
    .expect_err("the agent's exemption is its namespace's only");

    // Remove the policy: other tests of this binary create pods freely.
    let mut del = cluster.kubectl().unwrap();
    run(del.args(["delete", "-f"]).arg(&manifest)).unwrap();
}
