#!/usr/bin/env bash
# Runs every check and test of ballast. Installs what the tests need first
# (as root, from Debian's packages), so it works on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."

need_pkgs=()
command -v mkfs.ext4 >/dev/null || need_pkgs+=(e2fsprogs)
command -v mkfs.xfs >/dev/null || need_pkgs+=(xfsprogs)
command -v mkfs.btrfs >/dev/null || need_pkgs+=(btrfs-progs)
command -v losetup >/dev/null || need_pkgs+=(util-linux)
# script(1) gives the CLI a terminal in crates/ballast/tests/snapshots.rs.
command -v script >/dev/null || need_pkgs+=(bsdutils)
[[ -x /bin/busybox ]] || need_pkgs+=(busybox-static)
# A FUSE server that the hardening tests stop (SIGSTOP) to make a hung filesystem.
command -v fuse-overlayfs >/dev/null || need_pkgs+=(fuse-overlayfs)
# A real Prometheus server scrapes the daemon in crates/ballast/tests/metrics.rs.
command -v prometheus >/dev/null || need_pkgs+=(prometheus)
# Headless Chromium renders the web dashboard in crates/ballast/tests/dashboard.rs.
command -v chromium >/dev/null || need_pkgs+=(chromium)
# A real etcd backs the store tests of crates/etcd and crates/ballast/tests/cluster.rs.
[[ -x /usr/bin/etcd ]] || need_pkgs+=(etcd-server)
# crates/ballast/tests/multinode.rs makes test hosts as network namespaces
# (ip from iproute2; nsenter is util-linux's).
command -v ip >/dev/null || need_pkgs+=(iproute2)
command -v nsenter >/dev/null || need_pkgs+=(util-linux)
# etcd-client (ballast's `etcd` feature) generates its gRPC code with protoc.
command -v protoc >/dev/null || need_pkgs+=(protobuf-compiler)
# rbd pools: a throwaway Ceph cluster for the tests, rbd-fuse for mapping,
# and librados/librbd headers plus libclang for the bindings (bindgen).
for p in ceph-mon ceph-osd ceph-mgr rbd-fuse; do
  command -v "$p" >/dev/null || need_pkgs+=("$p")
done
command -v ceph >/dev/null || need_pkgs+=(ceph-common)
# Backups go to Ceph's RADOS Gateway (S3) in crates/ballast/tests/backups.rs;
# curl makes its bucket there.
command -v radosgw >/dev/null || need_pkgs+=(radosgw)
command -v curl >/dev/null || need_pkgs+=(curl)
[[ -e /usr/include/rados/librados.h ]] || need_pkgs+=(librados-dev)
[[ -e /usr/include/rbd/librbd.h ]] || need_pkgs+=(librbd-dev)
compgen -G '/usr/lib/llvm-*/lib/libclang.so' >/dev/null || need_pkgs+=(libclang-dev)
if ((${#need_pkgs[@]})); then
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
    echo "installing ${need_pkgs[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
  else
    echo "warning: missing ${need_pkgs[*]}; tests that need them skip (or fail with CI=true)" >&2
  fi
fi

# schemathesis fuzzes the REST API in crates/ballast/tests/schemathesis.rs.
if ! python3 -m schemathesis.cli --version 2>/dev/null | grep -q '4.32.5$'; then
  # A Debian-managed python3 refuses a plain install (PEP 668).
  python3 -m pip install -q 'schemathesis==4.32.5' 2>/dev/null \
    || python3 -m pip install -q --break-system-packages 'schemathesis==4.32.5'
fi

# Python's grpcio, a C-core gRPC client, talks to the CSI socket in
# crates/ballast/tests/csi.rs.
if command -v python3 >/dev/null && ! python3 -c 'import grpc' 2>/dev/null; then
  echo "installing grpcio"
  python3 -m pip install --quiet grpcio==1.85.1 2>/dev/null \
    || python3 -m pip install --quiet --break-system-packages grpcio==1.85.1
fi

# The Docker tests need a running dockerd.
if command -v docker >/dev/null && ! docker info >/dev/null 2>&1 && [[ $(id -u) == 0 ]]; then
  echo "starting dockerd"
  service docker start >/dev/null 2>&1 || true
  for _ in $(seq 10); do docker info >/dev/null 2>&1 && break; sleep 1; done
  if ! docker info >/dev/null 2>&1; then
    # The init script may report success without starting anything.
    setsid nohup dockerd >/var/log/dockerd-ballast-tests.log 2>&1 < /dev/null &
    for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
  fi
fi

echo "== cargo fmt --check"
cargo fmt --all --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --all-features --locked -- -D warnings
echo "== tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --all-features --locked --no-fail-fast
else
  cargo test --workspace --all-features --locked --no-fail-fast
fi
