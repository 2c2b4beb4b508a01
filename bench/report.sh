#!/usr/bin/env bash
# Benchmark 3, "Report": `podid report` against `azwi podidentity detect` on one live cluster
# (5,000 pods in 50 namespaces), and `podid report --from-file` on a 50,000-pod snapshot as YAML
# and as a JSON List. Release build. Prints the table; writes bench/results/report.json and
# bench/results/report.svg. Prerequisites: tests/cluster/build.sh (Kubernetes binaries) and
# tests/peers/build-workload-identity.sh (azwi), or PODID_K8S_BIN / PODID_WI_BIN.
# Knobs: PODID_BENCH_ROUNDS (3), PODID_BENCH_LIVE_PODS (5000), PODID_BENCH_LIVE_NAMESPACES (50),
# PODID_BENCH_SNAPSHOT_PODS (50000), PODID_BENCH_OUT (bench/results/report.json).
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo bench -p podid-cli --bench report_side_by_side "$@"
