#!/usr/bin/env bash
# Builds native/init (static C init) and native/addon (node-addon-api) when their sources changed.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -f native/Makefile ]; then
  make -s -C native >&2
fi
