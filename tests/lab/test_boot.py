"""Lab tests for `lmig-rdma run`: Debian's kernel + a busybox initramfs under nested KVM."""

import re
import signal
import time

import labkit
from labkit import LabTest


class Boot(LabTest):
    def boot(self, mem, cpus, extra=""):
        start = time.monotonic()
        p = self.start(["run"] + labkit.vm_args(mem=mem, cpus=cpus, extra_cmdline=extra), "run")
        m = p.wait_for(r"userspace up, cpus=(\d+) memtotal_kb=(\d+)\r?\n", 90)
        print(f"  boot to first userspace line: {time.monotonic() - start:.2f}s "
              f"({cpus} vCPU, {mem})", flush=True)
        return p, int(m.group(1)), int(m.group(2))

    def shell(self, p, command, expect):
        """Types COMMAND at the guest's shell and waits for EXPECT (regex) on the console."""
        p.wait_for("shell ready", 30)
        p.send(command + "\n")
        return p.wait_for(expect, 30)

    def reboot(self, p):
        p.wait_for("shell ready", 30)
        p.send("reboot -f\n")
        self.assertEqual(p.wait(60), 0)

    def test_1cpu_1g_sees_its_memory_and_reboot_exits_0(self):
        p, cpus, mem_kb = self.boot("1G", 1)
        self.assertEqual(cpus, 1)
        self.assertGreater(mem_kb, 900 * 1024)
        self.assertLess(mem_kb, 1024 * 1024)
        self.reboot(p)
        self.assertIn("guest reset", p.stderr())

    def test_2cpus_4g_above_the_hole(self):
        p, cpus, mem_kb = self.boot("4G", 2)
        self.assertEqual(cpus, 2)
        self.assertGreater(mem_kb, 3900 * 1024)  # memory above 3 GiB continues above 4 GiB
        self.shell(p, "grep -c processor /proc/cpuinfo", r"\n2\r?\n")
        self.reboot(p)

    def test_8g_guest_boots(self):
        p, cpus, mem_kb = self.boot("8G", 1)
        self.assertGreater(mem_kb, 7900 * 1024)
        self.reboot(p)

    def test_poweroff_exits_0(self):
        p, _, _ = self.boot("512M", 1)
        self.shell(p, "poweroff -f", "Power down")
        self.assertEqual(p.wait(60), 0)
        self.assertIn("powered off", p.stderr())

    def test_shell_answers_stdin(self):
        p, _, _ = self.boot("512M", 1)
        self.shell(p, "echo hello $((6*7))", r"hello 42")
        self.reboot(p)

    def test_sigterm_stops_cleanly(self):
        p, _, _ = self.boot("512M", 1)
        p.kill(signal.SIGTERM)
        self.assertEqual(p.wait(30), 0)
        self.assertIn("stopped by Terminated", p.stderr())

    def test_stdin_at_eof_does_not_stop_the_guest(self):
        p = self.start(["run"] + labkit.vm_args(extra_cmdline="lmig.workload=--mib,8,--rate,1"),
                       "run")
        p.close_stdin()
        p.wait_for(r"tick 3 ", 90)
        self.assertIsNone(p.p.poll())
        p.kill(signal.SIGTERM)
        self.assertEqual(p.wait(30), 0)


if __name__ == "__main__":
    labkit.main()
