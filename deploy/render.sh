#!/usr/bin/env bash
# Renders deploy/manifests/<profile>.yaml from the chart deploy/charts/podid with the values of
# deploy/profiles/<profile>.yaml: the manifests for `kubectl apply` are the chart's output, never
# edited by hand. A test (tests/harness/tests/chart.rs) renders them again and fails on drift.
#
#   deploy/render.sh            rewrite deploy/manifests/
#   deploy/render.sh --check    exit 1 when deploy/manifests/ differs from the chart's output
#   deploy/render.sh DIR        write the manifests into DIR instead
#
# helm is $PODID_HELM, else `helm` on PATH (tests/cluster/build.sh --helm builds it).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
helm="${PODID_HELM:-helm}"
out="$here/manifests"
check=false
case "${1:-}" in
  --check) check=true; out="$(mktemp -d)"; trap 'rm -rf "$out"' EXIT ;;
  "") ;;
  *) out="$1" ;;
esac
mkdir -p "$out"
for profile in "$here"/profiles/*.yaml; do
  name="$(basename "$profile" .yaml)"
  {
    echo "# Rendered from deploy/charts/podid with deploy/profiles/$name.yaml by deploy/render.sh:"
    echo "# do not edit; change the chart or the profile and run deploy/render.sh."
    grep '^#' "$profile"
    # The floor podid supports (docs/compatibility.md); the namespace the original installs into.
    "$helm" template podid "$here/charts/podid" --namespace default --kube-version 1.30.0 \
      --values "$profile"
  } > "$out/$name.yaml"
done
if $check; then
  diff -ru "$here/manifests" "$out" >&2 || {
    echo "deploy/manifests/ differs from the chart's output: run deploy/render.sh" >&2
    exit 1
  }
fi
