#!/usr/bin/env bash
# infra/setup.sh — make this machine able to run fnhost and its tests. Idempotent: each step checks what is
# already in place and does only what is missing, so a second run is a quick no-op.
#
#   bash infra/setup.sh           everything the host and the tests need
#   bash infra/setup.sh --bench   also the tools the benchmarks compare against (runc, crun, bwrap, hyperfine)
#
# Steps: Debian packages → npm ci → native build (init + addon) → base images. Progress goes to stderr.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

say() { printf '\033[1msetup:\033[0m %s\n' "$*" >&2; }

if [ "$(id -u)" != 0 ]; then
  say "fnhost needs root (namespaces, cgroups, mounts); run this as root."
  exit 1
fi

# --- Debian packages -----------------------------------------------------------------------------------
# redis-server: the queue and metadata store (embedded when REDIS_URL is unset).
# busybox-static: the busybox base image and the in-sandbox test probes' shell.
# erofs-utils / squashfs-tools: optional packed layers. umoci + skopeo: build real OCI layouts in tests.
# zstd: zstd-compressed OCI layers. iproute2: `ip` for the network-isolation probes.
# python3: turns OCI whiteouts into overlayfs ones on image import (mknod + setxattr, services/store/layer-writer.ts).
PKGS=(redis-server busybox-static build-essential erofs-utils squashfs-tools umoci skopeo zstd iproute2 zip unzip python3)
if [ "${1:-}" = "--bench" ]; then PKGS+=(runc crun bubblewrap hyperfine); fi
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi

# --- npm dependencies ----------------------------------------------------------------------------------
stamp=node_modules/.fnhost-lock-sha256
want=$(sha256sum package-lock.json | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  say "npm ci"
  npm ci --no-audit --no-fund >&2
  echo "$want" > "$stamp"
fi

# --- native launcher (C init + node-addon-api addon) ---------------------------------------------------
bash infra/build-native.sh

# --- base images ---------------------------------------------------------------------------------------
if [ -f infra/build-images.sh ]; then
  bash infra/build-images.sh
fi

say "ready"
