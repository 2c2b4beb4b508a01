#!/usr/bin/env bash
# Benchmark 2, "Controller": podid-operator against the original MIC on one control plane with
# 5,000 pods on 100 nodes in 5 scale sets, 200 identities and bindings, from empty and after
# churn, with ARM answering as slowly as Azure (a scale-set PATCH takes 2.5 s). Release build.
# Prints the table; writes bench/results/controller.json and bench/results/controller.svg.
# Prerequisites: tests/cluster/build.sh (Kubernetes binaries) and tests/peers/build.sh (the
# original MIC), or PODID_K8S_BIN / PODID_PEERS_BIN.
# Knobs: PODID_BENCH_PODS (5000), PODID_BENCH_NODES (100), PODID_BENCH_SCALE_SETS (5),
# PODID_BENCH_IDENTITIES (200), PODID_BENCH_ROUNDS (1), PODID_BENCH_PATCH_MS (2500),
# PODID_BENCH_ARM_MS (100), PODID_BENCH_LRO_POLLS (1), PODID_BENCH_TIMEOUT_SECS (240),
# PODID_BENCH_CHURN_PERCENT (10), PODID_BENCH_CHURN_BINDINGS (5), PODID_BENCH_ONLY (podid or mic:
# one side alone, to profile it), PODID_BENCH_OUT (bench/results/controller.json).
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo bench -p podid-operator --bench controller_side_by_side "$@"
