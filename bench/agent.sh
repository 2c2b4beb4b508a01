#!/usr/bin/env bash
# Benchmark 1, "Node agent": podid-nmi against the original NMI (aad-pod-identity v1.8.17) on one
# node of 200 pods, each bound to its own identity, alternating: warm (64 workers and 1), cold,
# and a pod asking for an identity it is not bound to; podid also with its token cache off.
# Release build; needs root (a network namespace for the agents). Prints the table and the goals;
# writes bench/results/agent.json and bench/results/agent.svg.
# Prerequisites: tests/cluster/build.sh (Kubernetes binaries) and tests/peers/build.sh (the
# original NMI), or PODID_K8S_BIN / PODID_PEERS_BIN.
# Knobs: PODID_BENCH_PODS (200), PODID_BENCH_SECS (5 per sample), PODID_BENCH_ROUNDS (3),
# PODID_BENCH_OUT (bench/results/agent.json).
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo bench -p podid-nmi --bench agent_side_by_side "$@"
