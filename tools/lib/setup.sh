# Shared by tools/test, tools/demo and tools/bench: install missing Debian packages (quietly,
# idempotently), then configure and build into build/.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PACKAGES=(cmake ninja-build g++ pkg-config linux-libc-dev liburing-dev libibverbs-dev
  librdmacm-dev rdma-core ibverbs-providers ibverbs-utils perftest libabsl-dev libgtest-dev
  libgmock-dev libbenchmark-dev libcli11-dev nlohmann-json3-dev libxxhash-dev qemu-system-x86
  busybox-static cpio kmod iproute2 socat python3 procps)

lmig_install_deps() {
  local missing=()
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
  done
  if ((${#missing[@]})); then
    echo "setup: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q "${missing[@]}" >/tmp/lmig-apt.log 2>&1 || {
      apt-get update -q >>/tmp/lmig-apt.log 2>&1
      apt-get install -y -q "${missing[@]}" >>/tmp/lmig-apt.log 2>&1 || {
        echo "setup: apt-get install failed, see /tmp/lmig-apt.log" >&2; tail -20 /tmp/lmig-apt.log >&2; exit 1; }
    }
  fi
}

lmig_build() {
  cmake -S "$ROOT" -B "$ROOT/build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
  ninja -C "$ROOT/build" "$@" | grep -vE '^\[[0-9]+/[0-9]+\]' || true
  test "${PIPESTATUS[0]}" -eq 0
  # The nested guest's initramfs: busybox + the guest workload.
  "$ROOT/tools/lab" guest-initrd --out "$ROOT/build/guest.cpio" \
    --workload "$ROOT/build/guest-workload" >/dev/null
}
