"""Reproduction (not part of ctest): a nested guest flooding its serial console (one port write
and up to one interrupt per character) triple-faulted within seconds in a fraction of runs
under lmig-rdma while the session thread was woken once per character; the same guest under
QEMU in the same lab did not. Seen with and without migration. Run inside the lab:

  tools/lab run --timeout 900 -- python3 tests/lab/repro/uart_storm.py lmig 8 [lmig-rdma flags]
  tools/lab run --timeout 900 -- python3 tests/lab/repro/uart_storm.py qemu 8

Measured 2026-11-25: lmig 3 of 8 runs died (KVM_EXIT_SHUTDOWN) within 25 s (again 2 of 8 with
2 MiB-aligned guest memory, and one stalled while booting); qemu 0 of 8. With console output
batched for 2 ms (no wakeup per character): lmig 0 of 8.
"""

import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import labkit  # noqa: E402


def main():
    mode, runs = sys.argv[1], int(sys.argv[2])
    deaths = 0
    for i in range(runs):
        if mode == "qemu":
            args = ["-enable-kvm", "-cpu", "host", "-m", "512", "-smp", "1", "-nodefaults",
                    "-no-user-config", "-display", "none", "-serial", "stdio", "-no-reboot",
                    "-kernel", labkit.KERNEL, "-initrd", labkit.GUEST_INITRD,
                    "-append", labkit.guest_cmdline(labkit.workload(mib=16))]
            p = labkit.Proc(args, "qemu", program="qemu-system-x86_64")
        else:
            p = labkit.Proc(["run"] + labkit.vm_args(extra_cmdline=labkit.workload(mib=16)) +
                            sys.argv[3:], "run")
        p.wait_for("shell ready", 90)
        p.send('i=0; while true; do echo "storm $i "; i=$((i+1)); done &\n')
        start = time.time()
        while time.time() - start < 25 and p.p.poll() is None:
            time.sleep(0.5)
        died = p.p.poll() is not None
        deaths += died
        print(f"{mode} run {i}: {'DIED ' + p.stderr().strip().splitlines()[-1] if died else 'alive'}",
              flush=True)
        p.kill()
        p.p.wait()
    print(f"{mode}: {deaths} of {runs} runs died")


if __name__ == "__main__":
    main()
