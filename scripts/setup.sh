#!/usr/bin/env bash
# Installs what a fresh Debian 12 machine (with Rust) lacks to build and run
# Causeway, then builds it. Idempotent: installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

export PATH="$HOME/.cargo/bin:$PATH"

missing=()
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
for pkg in elixir erlang-nox erlang-dev libclang-dev clang build-essential; do
  have_pkg "$pkg" || missing+=("$pkg")
done

if [ ${#missing[@]} -gt 0 ]; then
  echo "==> setup: installing ${missing[*]}"
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo not found. Install Rust first: https://rustup.rs" >&2
  exit 1
fi

echo "==> setup: $(elixir --version 2>/dev/null | tail -n 1); $(cargo --version)"
echo "==> setup: cargo target directory ${CAUSEWAY_TARGET_DIR:-$HOME/.cache/causeway/target} (RocksDB is built there once, ~14 min the first time)"
