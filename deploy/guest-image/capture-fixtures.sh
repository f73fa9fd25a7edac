#!/usr/bin/env bash
# Re-capture the guest-kernel ftrace fixtures used by the probe-listener page-decoder tests:
#   services/probe-listener/test/fixtures/guest-6.1/
# Builds a frontend-less guest image into .cache/guest-fixture (the real image is left alone),
# boots it under QEMU and drives tracefs over the serial console (test/harness/capture-fixtures.ts).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
IMG="$REPO/.cache/guest-fixture"
bash "$HERE/build.sh" --no-frontend --out "$IMG"
cd "$REPO"
exec npx tsx test/harness/capture-fixtures.ts --image-dir "$IMG" "$@"
