#!/usr/bin/env bash
# Runs every podid test on this machine: builds (once, cached) what the tests need outside Cargo
# — a real Kubernetes control plane, the original aad-pod-identity components and the Azure
# Workload ID webhook from the Go module proxy, a Python venv with azure-identity —
# then `cargo test --workspace`. Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."

export PODID_CACHE_DIR="${PODID_CACHE_DIR:-$HOME/.cache/podid}"
mkdir -p "$PODID_CACHE_DIR"

# Kubernetes binaries (kube-apiserver, etcd, kwok, ...) for the test harness.
if [ -x tests/cluster/build.sh ]; then
  PODID_K8S_BIN="$(tests/cluster/build.sh | tail -n 1)"
  export PODID_K8S_BIN
fi

# helm, for the chart tests (deploy/charts/podid: rendering, drift of deploy/manifests/).
if [ -x tests/cluster/build.sh ]; then
  PODID_HELM="$(tests/cluster/build.sh --helm | tail -n 1)"
  export PODID_HELM
fi

# The original aad-pod-identity MIC, NMI and demo (v1.8.17), for the side-by-side parity tests,
# and the real Azure Workload ID webhook and azwi (v1.6.0), found by tests under PODID_CACHE_DIR.
if [ -x tests/peers/build.sh ]; then
  PODID_PEERS_BIN="$(tests/peers/build.sh | tail -n 1)"
  export PODID_PEERS_BIN
fi

# Python azure-identity, for tests that drive real SDK clients.
if [ -x tests/azure-emulator/setup-python.sh ]; then
  PODID_PY_VENV="$(tests/azure-emulator/setup-python.sh | tail -n 1)"
  export PODID_PY_VENV
fi

# Tests whose prerequisite (root, network namespaces, openssl, ...) is missing skip outside CI
# (under CI=true they fail) and say why here; the list is printed at the end.
PODID_SKIP_LOG="$(mktemp "${TMPDIR:-/tmp}/podid-skips.XXXXXX")"
export PODID_SKIP_LOG
status=0
cargo test --workspace --locked --no-fail-fast "$@" || status=$?

# The compatibility selection on the oldest Kubernetes podid is tested on (docs/compatibility.md):
# the CRD tests (the committed file for that server and `podid crds apply`), the chart's profiles
# and NET_RAW policy, and one operator, node-agent and report scenario, against its
# kube-apiserver, kube-controller-manager and kube-scheduler (etcd and kwok stay the current
# ones). Skipped when arguments narrow the run.
if [ $# -eq 0 ] && [ -x tests/cluster/build.sh ]; then
  PODID_K8S_APISERVER="$(tests/cluster/build.sh --oldest | tail -n 1)"
  export PODID_K8S_APISERVER
  printf '\n== compatibility: the selection on %s\n' "$("$PODID_K8S_APISERVER" --version)"
  # One cargo invocation over the workspace, as above, so nothing is rebuilt; the filters pick
  # the tests (every test of crds/tests/apiserver.rs and operator/tests/cluster_emulator.rs).
  cargo test --workspace --locked \
    --test apiserver --test cluster_emulator --test bridge --test live --test chart -- \
    generated_crd_yaml_applies malformed_objects_are_rejected objects_written_by_the_original \
    every_profile_applies_server_side the_net_raw_policy_rejects_pods_keeping_net_raw \
    a_bound_pod_gets_its_identity_on_the_scale_set workloads_on_pod_identity_get_proven \
    managed_mode_security_matrix live_report_equals_report_of_its_snapshot \
    crds_apply_picks_the_variant_for_the_server || status=$?
  unset PODID_K8S_APISERVER
fi
if [ -s "$PODID_SKIP_LOG" ]; then
  printf '\n== skipped tests (prerequisite missing on this machine)\n'
  sort -u "$PODID_SKIP_LOG"
fi
rm -f "$PODID_SKIP_LOG"
exit "$status"
