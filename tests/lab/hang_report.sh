#!/bin/sh
# tools/lab's report on a lab command that does not finish in time: exit 124, and where each lab
# CPU was before the kill (QEMU's monitor), its RIP named from the lab kernel's own symbols, so
# that a CI run whose lab froze says where.
cd "$(dirname "$0")/../.."
out=$(tools/lab run --timeout 45 -- sleep 600 2>&1)
rc=$?
echo "$out"
[ "$rc" = 124 ] || { echo "hang_report: tools/lab exited $rc, expected 124"; exit 1; }
for cpu in 0 1; do
  echo "$out" | grep -qE "lab CPU#$cpu: 0x[0-9a-f]+ [A-Za-z_][A-Za-z0-9_.]*\+0x[0-9a-f]+ IF=[01]" || {
    echo "hang_report: no named RIP for lab CPU#$cpu"; exit 1; }
done
echo "hang_report: OK"
