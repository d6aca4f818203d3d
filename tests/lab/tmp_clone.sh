#!/bin/sh
# A checkout under /tmp works: clone this repository into a fresh folder under /tmp (which the
# lab hides under its own tmpfs unless tools/lab mounts the checkout again) and run
# `./tools/test -R lab_smoke` there. The clone shares this checkout's lab cache (LAB_CACHE:
# Debian's kernel and the lab's QEMU) so nothing is fetched again; it builds in its own build/.
set -e
src=$(cd "$(dirname "$0")/../.." && pwd)
dir=$(mktemp -d /tmp/lmig-clone-XXXXXX)
trap 'rm -rf "$dir"' EXIT
git clone -q "$src" "$dir/lmig-rdma"
cd "$dir/lmig-rdma"
echo "tmp_clone: $(git log -1 --format='%h %s') in $PWD"
LAB_CACHE=${LAB_CACHE:-$src/.cache/lab} ./tools/test -R lab_smoke
echo "tmp_clone: OK"
