#!/usr/bin/env bash
# Builds the control-plane binaries podid's tests run — kube-apiserver, kube-controller-manager,
# kube-scheduler, kubectl, etcd and kwok — from the Go module proxy, into a cache outside the
# repository keyed by their versions. Does nothing when they are already there.
# Prints the bin directory on its last line (tests read it from PODID_K8S_BIN).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"

modver() { # version of module $2 required by wrapper module $1
  awk -v m="$2" '$1 == m || ($1 == "require" && $2 == m) { v = ($1 == "require") ? $3 : $2 } END { print v }' "$here/$1/go.mod"
}
K8S_VERSION="$(modver k8s k8s.io/kubernetes)"
ETCD_VERSION="$(modver etcd go.etcd.io/etcd/server/v3)"
KWOK_VERSION="$(modver kwok sigs.k8s.io/kwok)"
cache="${PODID_CACHE_DIR:-$HOME/.cache/podid}"
bin="$cache/k8s-$K8S_VERSION-etcd-$ETCD_VERSION-kwok-$KWOK_VERSION/bin"
mkdir -p "$bin"

# readonly: the committed go.mod/go.sum are complete; a build must never rewrite them.
export CGO_ENABLED=0 GOFLAGS="-mod=readonly -buildvcs=false"
build_date="$(date -u +%Y-%m-%dT%H:%M:%SZ)"

stamp_k8s() {
  local minor="${K8S_VERSION#v1.}"; minor="${minor%%.*}"
  local flags="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    flags="$flags -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    flags="$flags -X $pkg.gitTreeState=clean -X $pkg.buildDate=$build_date"
  done
  echo "$flags"
}

build() { # name module-dir package ldflags
  local name="$1" dir="$2" pkg="$3" ldflags="$4"
  if [ -x "$bin/$name" ]; then return; fi
  echo "building $name ($pkg)" >&2
  local t0=$SECONDS
  (cd "$here/$dir" && go build -p "${PODID_GO_JOBS:-2}" -trimpath -tags selinux,notest \
      -ldflags "$ldflags" -o "$bin/$name.tmp" "$pkg")
  mv "$bin/$name.tmp" "$bin/$name"
  echo "built $name in $((SECONDS - t0))s" >&2
}

# `--oldest`: the kube-apiserver, kube-controller-manager and kube-scheduler of the oldest
# Kubernetes podid is tested on (tests/cluster/k8s-oldest, docs/compatibility.md), side by side;
# prints the kube-apiserver's path on the last line.
if [ "${1:-}" = "--oldest" ]; then
  K8S_VERSION="$(modver k8s-oldest k8s.io/kubernetes)"
  bin="$cache/k8s-$K8S_VERSION/bin"
  mkdir -p "$bin"
  oldest_flags="$(stamp_k8s)"
  build kube-apiserver k8s-oldest k8s.io/kubernetes/cmd/kube-apiserver "$oldest_flags"
  build kube-controller-manager k8s-oldest k8s.io/kubernetes/cmd/kube-controller-manager "$oldest_flags"
  build kube-scheduler k8s-oldest k8s.io/kubernetes/cmd/kube-scheduler "$oldest_flags"
  echo "$bin/kube-apiserver"
  exit 0
fi

# `--helm`: only `helm` (tests/cluster/helm pins helm.sh/helm/v3), for the chart tests
# (deploy/charts/podid, tests/harness/tests/chart.rs); prints its path on the last line.
if [ "${1:-}" = "--helm" ]; then
  HELM_VERSION="$(modver helm helm.sh/helm/v3)"
  bin="$cache/helm-$HELM_VERSION/bin"
  mkdir -p "$bin"
  build helm helm helm.sh/helm/v3/cmd/helm \
    "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
  echo "$bin/helm"
  exit 0
fi

k8s_flags="$(stamp_k8s)"
build etcd etcd go.etcd.io/etcd/server/v3 \
  "-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=podid-build"
build kube-apiserver k8s k8s.io/kubernetes/cmd/kube-apiserver "$k8s_flags"
build kubectl k8s k8s.io/kubernetes/cmd/kubectl "$k8s_flags"
build kube-controller-manager k8s k8s.io/kubernetes/cmd/kube-controller-manager "$k8s_flags"
build kube-scheduler k8s k8s.io/kubernetes/cmd/kube-scheduler "$k8s_flags"
build kwok kwok sigs.k8s.io/kwok/cmd/kwok "-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=$KWOK_VERSION"

echo "$bin"
