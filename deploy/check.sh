#!/usr/bin/env bash
# Render every kustomization under deploy/ and fail on the first error.
# No cluster needed. Usage: deploy/check.sh  (KUBECTL=... to override)
set -euo pipefail
cd "$(dirname "$0")"
kubectl="${KUBECTL:-kubectl}"
for dir in base overlays/example-postgres; do
  if ! out="$("$kubectl" kustomize "$dir" 2>&1)"; then
    echo "FAIL: $kubectl kustomize deploy/$dir" >&2
    echo "$out" >&2
    exit 1
  fi
  echo "ok: deploy/$dir ($(grep -c '^kind:' <<<"$out") objects)"
done
