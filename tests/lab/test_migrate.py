"""Lab tests for live migration: `lmig-rdma src --peer` -> `lmig-rdma dst --listen`, inside the
lab on 10.0.2.15, over the transport in LMIG_TRANSPORT (tcp or rdma, default tcp). The guest runs
the project's workload, which verifies its memory all the time: errors=0 and an unbroken tick
sequence across hosts prove no write was lost."""

import os
import re
import signal
import time

import labkit
from labkit import LAB_IP, LabTest

TRANSPORT = os.environ.get("LMIG_TRANSPORT", "tcp")


def stats_path(name):
    return os.path.join(labkit.RESULTS, f"{TRANSPORT}-{name}-{os.getpid()}.json")


class Migrate(LabTest):
    def dst(self, port, *extra, name="dst", stats=None):
        args = ["dst", "--listen", f"{LAB_IP}:{port}", "--transport", TRANSPORT]
        if stats:
            args += ["--stats-json", stats]
        p = self.start(args + list(extra), name)
        p.wait_for("listening on", 15, stream="err")
        return p

    def src(self, port, vm, *extra, stats=None):
        args = ["src"] + vm + ["--peer", f"{LAB_IP}:{port}", "--transport", TRANSPORT]
        if stats:
            args += ["--stats-json", stats]
        return self.start(args + list(extra), "src")

    @staticmethod
    def why_src_failed(s, d):
        """What a failed source run is judged by: its stderr and console, the dst's stderr."""
        return s.tails(err=3000) + "\n" + d.tails(out=0)

    def finish_on(self, p, tick_after, came_from=None):
        """Waits for a few more ticks on P, reboots the guest there, expects exit status 0.
        A guest that stops ticking is reported with the console and stderr of the process it
        CAME_FROM, since what went wrong may have started there."""
        try:
            p.wait_for(rf"tick {tick_after} ", 60)
        except AssertionError as e:
            if came_from is None:
                raise
            raise AssertionError(f"{e}\n{came_from.tails()}")
        p.send("reboot -f\n")
        self.assertEqual(p.wait(60), 0, p.tails(err=2000, out=0))

    def migrate_once(self, cpus=1, mem="512M", wl=None, extra_src=()):
        port = labkit.next_port()
        s_json, d_json = stats_path("src"), stats_path("dst")
        d = self.dst(port, stats=d_json)
        s = self.src(port, labkit.vm_args(mem=mem, cpus=cpus, extra_cmdline=wl or labkit.workload()),
                     "--migrate-on-output", "tick 3 ", "--verify-memory", *extra_src,
                     stats=s_json)
        self.assertEqual(s.wait(240), 0, self.why_src_failed(s, d))
        last_src = labkit.ticks(s.stdout())[-1][0]
        self.finish_on(d, last_src + 3, came_from=s)
        self.assert_ticks_continue(s.stdout(), d.stdout())
        st = labkit.load_json(s_json)
        self.assertEqual(st["status"], "completed")
        self.assertEqual(labkit.load_json(d_json)["status"], "completed")
        self.assertEqual(st["transport"], TRANSPORT)
        self.assertGreater(st["zero_pages_skipped"], 0)
        self.assertGreaterEqual(st["rounds"], 2)
        self.assertEqual(len(st["per_round"]), st["rounds"])
        self.assertGreater(st["downtime_ms"], 0)
        print(f"  {TRANSPORT}: total {st['total_time_ms']:.0f} ms, downtime "
              f"{st['downtime_ms']:.1f} ms, {st['transferred_bytes'] / 2**20:.1f} MiB, "
              f"{st['rounds']} rounds, throttle {st['max_throttle_pct']}%", flush=True)
        return st

    def test_workload_migrates_without_losing_a_write(self):
        self.migrate_once()

    def test_two_vcpus(self):
        self.migrate_once(cpus=2, wl=labkit.workload(mib=64, rate=8, threads=2))

    def test_dirty_bitmap_tracking(self):
        st = self.migrate_once(extra_src=("--dirty-tracking", "bitmap"))
        self.assertEqual(st["dirty_tracking"], "bitmap")

    def test_guest_dirtying_faster_than_the_link_converges(self):
        st = self.migrate_once(wl=labkit.workload(mib=32, rate=48),
                               extra_src=("--max-bandwidth", "8M", "--max-rounds", "20"))
        self.assertGreater(st["max_throttle_pct"], 0)

    def test_console_interrupt_storm_during_migration(self):
        """The guest floods its serial console (a port exit and an interrupt per character)
        while its timers tick; mid-storm it migrates, and on the destination the storm's line
        numbers and the ticks carry on from exactly where they stopped."""
        port = labkit.next_port()
        d = self.dst(port)
        s = self.src(port, labkit.vm_args(extra_cmdline=labkit.workload(mib=16)),
                     "--migrate-on-output", "storm 500 ", "--verify-memory")
        s.wait_for("shell ready", 90)
        s.send("i=0; while true; do echo \"storm $i \"; i=$((i+1)); done &\n")
        self.assertEqual(s.wait(240), 0, self.why_src_failed(s, d))
        storm = re.compile(r"storm (\d+) ")
        last = int(storm.findall(s.stdout())[-1])
        d.wait_for(rf"storm {last + 500} ", 120)
        d.send("kill %1; reboot -f\n")
        self.assertEqual(d.wait(60), 0, d.tails(err=2000, out=0))
        nums = [int(n) for n in storm.findall(s.stdout() + d.stdout())]
        self.assertEqual(nums, list(range(nums[0], nums[0] + len(nums))),
                         "console lines lost or repeated across the migration")
        self.assert_ticks_continue(s.stdout(), d.stdout())

    def test_ping_pong_three_migrations(self):
        p1, p2, p3 = labkit.next_port(), labkit.next_port(), labkit.next_port()
        # A -> B -> A -> B: each hop is a fresh process, as on real hosts.
        hop3 = self.dst(p3, name="hop3")
        hop2 = self.dst(p2, "--peer", f"{LAB_IP}:{p3}", "--migrate-after", "3", name="hop2")
        hop1 = self.dst(p1, "--peer", f"{LAB_IP}:{p2}", "--migrate-after", "3", name="hop1")
        s = self.src(p1, labkit.vm_args(extra_cmdline=labkit.workload()),
                     "--migrate-on-output", "tick 2 ")
        for p in (s, hop1, hop2):
            self.assertEqual(p.wait(240), 0, p.tails(err=3000, out=0))
        last = labkit.ticks(hop2.stdout())[-1][0]
        self.finish_on(hop3, last + 2)
        self.assert_ticks_continue(s.stdout(), hop1.stdout(), hop2.stdout(), hop3.stdout())


class Faults(LabTest):
    def keeps_running_then_exits_3(self, s):
        """After a failed migration the guest keeps ticking on the source (errors=0)."""
        s.wait_for("the guest keeps running here", 120, stream="err")
        n = labkit.ticks(s.stdout())[-1][0]
        s.wait_for(rf"tick {n + 2} ", 60)
        s.send("reboot -f\n")
        self.assertEqual(s.wait(60), 3)
        Migrate.assert_ticks_continue(self, s.stdout())

    def test_unreachable_peer(self):
        port = labkit.next_port()
        s = self.start(["src"] + labkit.vm_args(extra_cmdline=labkit.workload(mib=16)) +
                       ["--peer", f"{LAB_IP}:{port}", "--transport", TRANSPORT, "--timeout", "5",
                        "--migrate-on-output", "tick 2 "], "src")
        self.keeps_running_then_exits_3(s)
        self.assertIn(f"{LAB_IP}:{port}", s.stderr())

    def test_destination_killed_mid_migration(self):
        port = labkit.next_port()
        d = self.start(["dst", "--listen", f"{LAB_IP}:{port}", "--transport", TRANSPORT], "dst")
        d.wait_for("listening on", 15, stream="err")
        s = self.start(["src"] + labkit.vm_args(extra_cmdline=labkit.workload(mib=64)) +
                       ["--peer", f"{LAB_IP}:{port}", "--transport", TRANSPORT, "--timeout", "10",
                        "--max-bandwidth", "4M", "--migrate-on-output", "tick 2 "], "src")
        s.wait_for("round 1", 90, stream="err")
        time.sleep(1)
        d.kill(signal.SIGKILL)
        self.keeps_running_then_exits_3(s)

    def test_wrong_key_is_refused(self):
        port = labkit.next_port()
        # Two different fresh keys: both sides say authentication failed, the destination
        # never creates a VM (no "incoming migration") and gives up after its --timeout.
        d = self.start(["dst", "--listen", f"{LAB_IP}:{port}", "--transport", TRANSPORT,
                        "--psk-file", labkit.new_key(), "--timeout", "10"], "dst")
        d.wait_for("listening on", 15, stream="err")
        s = self.start(["src"] + labkit.vm_args(extra_cmdline=labkit.workload(mib=16)) +
                       ["--peer", f"{LAB_IP}:{port}", "--transport", TRANSPORT,
                        "--psk-file", labkit.new_key(), "--migrate-on-output", "tick 2 "], "src")
        self.assertNotEqual(d.wait(60), 0)
        err = d.stderr().strip().splitlines()[-1]
        self.assertIn("authentication failed", err)
        self.assertNotIn("incoming migration", d.stderr())
        self.keeps_running_then_exits_3(s)
        self.assertIn("authentication failed (refused by the source)", s.stderr())


if __name__ == "__main__":
    labkit.main()
