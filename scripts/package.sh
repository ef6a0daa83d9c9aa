#!/usr/bin/env bash
# Builds the Debian package target/debian/failoverd_<version>_<arch>.deb with cargo-deb:
# the stripped binary, the systemd unit, the example config as a conffile, the docs, the
# alert rules and dashboard, and the man page and shell completions, which the binary
# generates from its own command-line definition.
#
#   scripts/package.sh          # release build (what to install)
#   scripts/package.sh dev      # package the debug build as it is (the tests check the contents)
set -euo pipefail
cd "$(dirname "$0")/.."

profile=${1:-release}
case "$profile" in
  release) cargo build --release -p failoverd; bin=target/release/failoverd; deb_args=() ;;
  dev) bin=target/debug/failoverd; deb_args=(--profile dev --no-strip --fast) ;;
  *) echo "usage: $0 [release|dev]" >&2; exit 2 ;;
esac
command -v cargo-deb >/dev/null || { echo "cargo-deb is missing: scripts/install-deps.sh installs it" >&2; exit 1; }

[ -x "$bin" ] || { echo "$bin is missing: build it first" >&2; exit 1; }
mkdir -p target/package
"$bin" man > target/package/failoverd.8
"$bin" completions bash > target/package/failoverd.bash
"$bin" completions zsh > target/package/_failoverd
"$bin" completions fish > target/package/failoverd.fish
cargo deb -p failoverd --no-build "${deb_args[@]}"
