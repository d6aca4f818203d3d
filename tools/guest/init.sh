#!/bin/busybox sh
# /init of the nested guest (tools/lab guest-initrd). Kernel command line options:
#   lmig.workload="ARGS"  start /bin/workload with ARGS (use ',' for spaces) in the background
#   lmig.run=CMD          run CMD (',' for spaces) before the shell
#   lmig.reboot_after=N   reboot -f after N seconds (in the background)
# Then an interactive shell runs on the console, so a test can type e.g. "reboot -f".
/bin/busybox --install -s /bin
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
echo "lmig-guest: userspace up, cpus=$(grep -c ^processor /proc/cpuinfo) memtotal_kb=$(sed -n 's/MemTotal: *\([0-9]*\).*/\1/p' /proc/meminfo)"
for word in $(cat /proc/cmdline); do
  case "$word" in
    lmig.workload=*) WL=$(echo "${word#lmig.workload=}" | tr ',' ' ') ;;
    lmig.run=*) RUN=$(echo "${word#lmig.run=}" | tr ',' ' ') ;;
    lmig.reboot_after=*) REBOOT_AFTER="${word#lmig.reboot_after=}" ;;
  esac
done
if [ -n "$WL" ]; then /bin/workload $WL & fi
if [ -n "$REBOOT_AFTER" ]; then (sleep "$REBOOT_AFTER"; echo "lmig-guest: rebooting"; reboot -f) & fi
if [ -n "$RUN" ]; then $RUN; fi
echo "lmig-guest: shell ready"
exec /bin/sh </dev/console >/dev/console 2>&1
