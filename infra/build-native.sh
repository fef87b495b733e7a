#!/usr/bin/env bash
# Builds native/ (native/Makefile): the sandbox's static init, the test probe, and the node-addon-api addon
# (node-gyp from npm's own bundle, headers from /usr/include/node: nothing is downloaded). Idempotent: make
# rebuilds only what changed, so an up-to-date tree costs a few milliseconds.
set -euo pipefail
cd "$(dirname "$0")/.."
for tool in gcc g++ make; do
  command -v "$tool" >/dev/null || { echo "build-native: $tool is missing (apt-get install build-essential)" >&2; exit 1; }
done
if [ ! -f /usr/include/node/node_api.h ]; then
  echo "build-native: Node headers are missing in /usr/include/node (apt-get install libnode-dev)" >&2
  exit 1
fi
if ! make -s -q -C native 2>/dev/null; then
  echo "build-native: building native/ (init, probe, addon)" >&2
  make -s -C native >&2
fi
