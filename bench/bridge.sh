#!/usr/bin/env bash
# Benchmark 4, "Bridge": podid's bridge from 200 new bindings (each its own workload,
# ServiceAccount and identity) to every federated credential proven, against Azure's
# per-identity pacing of credential writes (1.5 s each). podid only: no peer does this. Release
# build. Prints the table; writes bench/results/bridge.json and bench/results/bridge.svg.
# Prerequisites: tests/cluster/build.sh (Kubernetes binaries), or PODID_K8S_BIN.
# Knobs: PODID_BENCH_BINDINGS (200), PODID_BENCH_IDENTITIES (200; fewer: identities shared by
# several bindings), PODID_BENCH_FIC_MS (1500), PODID_BENCH_ARM_MS (100), PODID_BENCH_ROUNDS (1),
# PODID_BENCH_TIMEOUT_SECS (300), PODID_BENCH_OUT (bench/results/bridge.json).
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo bench -p podid-operator --bench bridge "$@"
