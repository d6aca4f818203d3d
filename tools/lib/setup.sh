# Shared by tools/test, tools/demo and tools/bench: install missing Debian packages (quietly,
# idempotently), then configure and build into build/.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PACKAGES=(cmake ninja-build g++ pkg-config linux-libc-dev liburing-dev libibverbs-dev
  librdmacm-dev rdma-core ibverbs-providers ibverbs-utils perftest libabsl-dev libgtest-dev
  libgmock-dev libbenchmark-dev libcli11-dev nlohmann-json3-dev libxxhash-dev qemu-system-x86
  libssl-dev openssl busybox-static cpio kmod iproute2 socat python3 procps tcpdump iperf3)
PACKAGES+=(clang libclang-rt-dev)  # tools/lib/sanitize.sh: libFuzzer, ASan/UBSan runtimes
PACKAGES+=(ccache)  # compiles cached across build folders and checkouts (lmig_cmake)

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
  lmig_backports
}

# The lab's QEMU comes from Debian's backports suite for this release (bookworm-backports:
# qemu-system-x86 10.0; Debian 12's own 7.2 stays installed as a benchmark peer). The suite is
# derived from this machine's own Debian apt sources (same mirror, components and key), and
# pinned at priority 100 so nothing on the machine is upgraded from it; tools/lab fetches
# QEMU's packages from it with `apt-get download` and unpacks them into .cache/lab/ beside 7.2.
lmig_backports() {
  local codename list=/etc/apt/sources.list.d/lmig-backports.sources
  local pin=/etc/apt/preferences.d/lmig-backports
  codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
  [[ -n $codename ]] || { echo "setup: no VERSION_CODENAME in /etc/os-release" >&2; exit 1; }
  if [[ ! -e $list ]]; then
    # The first deb822 stanza (or one-line entry) of the machine's sources that carries the
    # release's own suite "$codename": its URIs, components and signing key, suite -backports.
    local stanza
    stanza=$(awk -v s="$codename" -v RS= '
      /(^|\n)Types:[^\n]*deb/ && match($0, /(^|\n)Suites:[^\n]*/) {
        n = split(substr($0, RSTART, RLENGTH), w, /[ \t\n]+/)
        for (i = 1; i <= n; i++) if (w[i] == s) { print; exit }
      }' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
    local uris comps key
    uris=$(sed -n 's/^URIs:[[:space:]]*//p' <<<"$stanza")
    comps=$(sed -n 's/^Components:[[:space:]]*//p' <<<"$stanza")
    key=$(sed -n 's/^Signed-By:[[:space:]]*//p' <<<"$stanza")
    if [[ -z $uris ]]; then
      local line
      line=$(grep -hE "^deb(\s+\[[^]]*\])?\s+\S+\s+$codename\s" \
        /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | head -1 || true)
      [[ -n $line ]] || {
        echo "setup: no Debian '$codename' suite in the apt sources to derive $codename-backports from" >&2
        exit 1; }
      line=$(sed -E 's/^deb(\s+\[[^]]*\])?\s+//' <<<"$line")
      uris=$(awk '{print $1}' <<<"$line")
      comps=$(awk '{for (i = 3; i <= NF; i++) printf "%s%s", $i, (i < NF ? " " : "")}' <<<"$line")
    fi
    echo "setup: adding $codename-backports ($uris) to apt, pinned at priority 100" >&2
    {
      echo "# Added by lmig-rdma's tools/lib/setup.sh for the lab's QEMU (derived from this"
      echo "# machine's $codename sources); $pin keeps anything else from upgrading from it."
      echo "Types: deb"
      echo "URIs: $uris"
      echo "Suites: $codename-backports"
      echo "Components: ${comps:-main}"
      [[ -z $key ]] || echo "Signed-By: $key"
    } >"$list.tmp"
    mv "$list.tmp" "$list"
  fi
  if [[ ! -e $pin ]]; then
    printf '%s\n' "# lmig-rdma: nothing is installed or upgraded from $codename-backports unless asked" \
      "Package: *" "Pin: release n=$codename-backports" "Pin-Priority: 100" >"$pin"
  fi
  if ! apt-cache policy 2>/dev/null | grep -q " $codename-backports/"; then
    echo "setup: apt-get update for $codename-backports" >&2
    apt-get update -q >>/tmp/lmig-apt.log 2>&1 || {
      echo "setup: apt-get update failed, see /tmp/lmig-apt.log" >&2; tail -20 /tmp/lmig-apt.log >&2; exit 1; }
  fi
}

# cmake -S $ROOT -B DIR ARGS...: a Ninja build folder whose compiles go through ccache, keyed
# on paths relative to the checkout, so another checkout of the same sources (tests/lab's
# clone under /tmp, a CI rerun) compiles nothing again. The cache is ccache's own ($HOME's,
# or CCACHE_DIR).
lmig_cmake() {
  local dir=$1
  shift
  local launcher=()
  if command -v ccache >/dev/null; then
    export CCACHE_BASEDIR=$ROOT CCACHE_NOHASHDIR=true
    launcher=(-DCMAKE_C_COMPILER_LAUNCHER=ccache -DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
  fi
  cmake -S "$ROOT" -B "$dir" -G Ninja "${launcher[@]}" "$@" >/dev/null
}

lmig_build() {
  lmig_cmake "$ROOT/build" -DCMAKE_BUILD_TYPE=RelWithDebInfo
  ninja -C "$ROOT/build" "$@" | grep -vE '^\[[0-9]+/[0-9]+\]' || true
  test "${PIPESTATUS[0]}" -eq 0
  # The nested guest's initramfs: busybox + the guest workload.
  "$ROOT/tools/lab" guest-initrd --out "$ROOT/build/guest.cpio" \
    --workload "$ROOT/build/guest-workload" >/dev/null
}
