#!/usr/bin/env bash
# Builds the original aad-pod-identity components podid is compared against — MIC, NMI and the
# demo program, at the version the wrapper module tests/peers/aad-pod-identity/go.mod requires —
# from the Go module proxy into a cache outside the repository. Nothing of theirs is committed:
# the wrapper module only names them. Does nothing when they are already built.
# Then builds the Azure Workload ID webhook and azwi (build-workload-identity.sh beside this file).
# Prints the aad-pod-identity bin directory on its last line (tests read it from PODID_PEERS_BIN).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"

version="$(awk '$1 == "require" && $2 == "github.com/Azure/aad-pod-identity" { print $3 }' "$here/aad-pod-identity/go.mod")"
cache="${PODID_CACHE_DIR:-$HOME/.cache/podid}"
bin="$cache/aad-pod-identity-$version/bin"
mkdir -p "$bin"

export CGO_ENABLED=0 GOFLAGS="-mod=readonly -buildvcs=false"
for name in mic nmi demo; do
  [ -x "$bin/$name" ] && continue
  echo "building original $name $version" >&2
  t0=$SECONDS
  (cd "$here/aad-pod-identity" && go build -p "${PODID_GO_JOBS:-2}" -trimpath -ldflags "-s -w" \
      -o "$bin/$name.tmp" "github.com/Azure/aad-pod-identity/cmd/$name")
  mv "$bin/$name.tmp" "$bin/$name"
  echo "built $name in $((SECONDS - t0))s" >&2
done
# The real Azure Workload ID webhook and azwi (tests find them under PODID_CACHE_DIR or PODID_WI_BIN).
"$here/build-workload-identity.sh" >&2
echo "$bin"
