#!/usr/bin/env bash
# Builds the real Azure Workload ID mutating webhook and `azwi`, at the version the wrapper module
# tests/peers/azure-workload-identity/go.mod requires, from the Go module proxy into a cache
# outside the repository. Nothing of theirs is committed: the wrapper module only names them.
# Their logging library (monis.app/mlog) is not served by the proxy; the wrapper module replaces
# it with the small stand-in in tests/peers/azure-workload-identity/mlog. Does nothing when both
# are already built. Prints the bin directory on its last line (tests read it from PODID_WI_BIN,
# or find it under PODID_CACHE_DIR).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
module="$here/azure-workload-identity"

version="$(awk '$1 == "require" && $2 == "github.com/Azure/azure-workload-identity" { print $3 }' "$module/go.mod")"
cache="${PODID_CACHE_DIR:-$HOME/.cache/podid}"
bin="$cache/azure-workload-identity-$version/bin"
mkdir -p "$bin"

export CGO_ENABLED=0 GOFLAGS="-mod=readonly -buildvcs=false"
for name in webhook azwi; do
  [ -x "$bin/$name" ] && continue
  echo "building Azure Workload ID $name $version" >&2
  t0=$SECONDS
  (cd "$module" && go build -p "${PODID_GO_JOBS:-2}" -trimpath \
      -ldflags "-s -w -X github.com/Azure/azure-workload-identity/pkg/version.BuildVersion=$version" \
      -o "$bin/$name.tmp" "github.com/Azure/azure-workload-identity/cmd/$name")
  mv "$bin/$name.tmp" "$bin/$name"
  echo "built $name in $((SECONDS - t0))s" >&2
done
echo "$bin"
