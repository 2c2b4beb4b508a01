#!/usr/bin/env bash
# Installs the real Python Azure SDK clients the tests drive (azure-identity, pinned) into a venv
# cached outside the repository. No-op when it is already there. Prints the venv path last.
set -euo pipefail
AZURE_IDENTITY_VERSION=1.27.0
REQUESTS_TOOLBELT_VERSION=1.0.0
cache="${PODID_CACHE_DIR:-$HOME/.cache/podid}"
venv="${PODID_PY_VENV:-$cache/venv-azure-identity-$AZURE_IDENTITY_VERSION}"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import azure.identity, requests_toolbelt" 2>/dev/null; then
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "azure-identity==$AZURE_IDENTITY_VERSION" "requests-toolbelt==$REQUESTS_TOOLBELT_VERSION" >&2
fi
echo "$venv"
