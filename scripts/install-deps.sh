#!/usr/bin/env bash
# Installs what failoverd needs to build and test on Debian/Ubuntu, as root.
# Idempotent: apt is only touched when a package is missing.
set -euo pipefail

packages=(
  clang llvm libbpf-dev linux-libc-dev  # compile bpf/*.c (build.rs)
  make gcc libc6-dev                     # build: jemalloc, the daemon's allocator (tikv-jemalloc-sys runs configure and make)
  iproute2                               # tests: network namespaces
  bpftool                                # operators: inspect maps and links
  prometheus                             # tests: promtool and a real Prometheus for the alert rules
  nftables iptables                      # chaos tests: black-hole a backend; benchmarks: DNAT baseline
  haproxy                                # benchmarks: the proxy failoverd is compared with
  systemd                                # tests: systemd-analyze verify of the unit
  postgresql redis-server                # tests: role checks against real servers (tests/roles.rs)
  mariadb-server mariadb-client          # tests: role checks against real servers (tests/roles.rs)
  protobuf-compiler libprotobuf-dev      # build: etcd-client's gRPC code (protoc and its well-known types)
  etcd-server etcd-client                # tests: fleet mode against a real etcd (tests/fleet.rs)
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if ! command -v cargo >/dev/null; then
  echo "cargo not found: failoverd needs Rust >= 1.89 (install it with rustup)" >&2
  exit 1
fi

# cargo-deb builds the package (scripts/package.sh; a test checks its contents).
if ! command -v cargo-deb >/dev/null; then
  echo "installing cargo-deb"
  cargo install cargo-deb --locked --version 3.8.0 --quiet
fi
