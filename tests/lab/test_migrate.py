"""Lab tests for live migration: `lmig-rdma src --peer` -> `lmig-rdma dst --listen`, inside the
lab on 10.0.2.15, over the transport in LMIG_TRANSPORT (tcp or rdma, default tcp). The guest runs
the project's workload, which verifies its memory all the time: errors=0 and an unbroken tick
sequence across hosts prove no write was lost."""

import errno
import os
import re
import signal
import socket
import time

import labkit
from labkit import LAB_IP, LabTest

TRANSPORT = os.environ.get("LMIG_TRANSPORT", "tcp")
# LMIG_NO_TLS=1: TCP migrations without TLS (--no-tls on both sides). The lab's emulated CPU
# runs AES-GCM some 150 times slower than the host (docs/benchmarks.md, "TLS cost"), so the
# workload suite runs plain to test migration rather than the emulated cipher; TLS migrations
# are tested by lab_tls and the TCP fault, stop-and-copy and link-cut suites.
PLAIN = ["--no-tls"] if TRANSPORT == "tcp" and os.environ.get("LMIG_NO_TLS") == "1" else []


def stats_path(name):
    return os.path.join(labkit.RESULTS, f"{TRANSPORT}-{name}-{os.getpid()}.json")


class Peers(LabTest):
    """Starting the two sides of a migration (no tests of its own)."""

    def dst(self, port, *extra, name="dst", stats=None):
        args = ["dst", "--listen", f"{LAB_IP}:{port}", "--transport", TRANSPORT] + PLAIN
        if stats:
            args += ["--stats-json", stats]
        p = self.start(args + list(extra), name)
        p.wait_for("listening on", 15, stream="err")
        return p

    def src(self, port, vm, *extra, stats=None):
        args = ["src"] + vm + ["--peer", f"{LAB_IP}:{port}", "--transport", TRANSPORT] + PLAIN
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


class Migrate(Peers):
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


class Faults(Peers):
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
        # Over TCP the key also keys TLS, whose handshake the destination refuses first (the
        # source's PSK binder does not verify); over RDMA the source refuses the destination's
        # proof in the challenge-response.
        self.assertIn("authentication failed (refused by the destination" if TRANSPORT == "tcp"
                      else "authentication failed (refused by the source)", s.stderr())


# The fault tests below give both sides --timeout T; a side must notice a fault within
# T + MARGIN seconds of it (MARGIN: the lab's nested guests and 2 shared cores are slow).
T = 10
MARGIN = 5
# Stop-and-copy that lasts seconds: 2 pre-copy rounds at 6 MB/s while the guest rewrites
# 16 MiB at 8 MiB/s, so the final round carries ~16 MiB (~3 s), and pre-copy ~15 s.
STOPCOPY_SRC = ("--max-rounds", "2", "--max-bandwidth", "6M")
STOPCOPY_WL = labkit.workload(mib=16, rate=8)


class Failures(Peers):
    """A fault during a migration: what each side must do about it (no tests of its own)."""

    def start_pair(self, port, src_extra, wl=STOPCOPY_WL):
        s_json, d_json = stats_path("src"), stats_path("dst")
        d = self.dst(port, "--timeout", str(T), stats=d_json)
        s = self.src(port, labkit.vm_args(mem="256M", extra_cmdline=wl),
                     "--migrate-on-output", "tick 2 ", "--timeout", str(T), *src_extra,
                     stats=s_json)
        return s, d, s_json, d_json

    def src_fails(self, s, since, bound):
        """The source reports the failure within BOUND s of SINCE (the fault); returns its
        reason and when it was seen."""
        m = s.wait_for(r"src: migration failed: (.*); the guest keeps running here", bound + 10,
                       stream="err")
        seen = time.monotonic()
        self.assertLessEqual(seen - since, bound,
                             f"src gave up {seen - since:.1f}s after the fault\n" + s.tails(out=0))
        print(f"  {TRANSPORT}: src gave up {seen - since:.1f}s after the fault: {m.group(1)}",
              flush=True)
        return m.group(1), seen

    def assert_dst_failed(self, d, d_json, since, bound):
        """D exits 1 within BOUND s of SINCE and never ran the guest: no console output, no
        "guest resumed", its last line says the migration failed, its stats say failed."""
        rc = d.wait(bound + 10)
        took = time.monotonic() - since
        err = d.stderr()
        self.assertEqual(rc, 1, d.tails(out=0))
        self.assertLessEqual(took, bound, f"dst exited {took:.1f}s after the fault\n" + d.tails())
        self.assertRegex(err.strip().splitlines()[-1],
                         r"^lmig-rdma: dst: migration failed, no guest resumed: ")
        self.assertNotIn("lmig-rdma dst: guest resumed", err)
        self.assertEqual(d.stdout(), "", "a guest ran on the destination")
        self.assertEqual(labkit.load_json(d_json)["status"], "failed")
        print(f"  {TRANSPORT}: dst exited 1 {took:.1f}s after the fault", flush=True)
        return took

    def keeps_ticking(self, s):
        """The guest runs on at the source after the failure (its vCPUs were resumed)."""
        n = labkit.ticks(s.stdout())[-1][0]
        s.wait_for(rf"tick {n + 2} ", 30)

    def fresh_dst(self, s, port):
        """The fresh destination for the source's retry, on the same port, started as soon as
        the failed attempt is over (before anything else is checked: the retry waits only
        --retry-delay)."""
        d2 = self.dst(port, name="dst2")
        self.assertNotIn("retrying the migration", s.stderr(),
                         "the retry began before the fresh destination listened")
        return d2

    def retry_completes(self, s, d2, port, s_json):
        """The source's one retry (--migrate-retries 1) migrates the guest to D2: src exits 0,
        ticks unbroken across both, errors=0."""
        deadline = time.monotonic() + 300  # until src exits, or its retry fails too
        while (s.p.poll() is None and time.monotonic() < deadline
               and s.stderr().count("the guest keeps running here") < 2):
            time.sleep(0.5)
        self.assertEqual(s.stderr().count("the guest keeps running here"), 1,
                         "the retry failed too\n" + self.why_src_failed(s, d2))
        self.assertEqual(s.wait(60), 0, self.why_src_failed(s, d2))
        err = s.stderr()
        self.assertEqual(err.count("retrying the migration (attempt 2 of 2)"), 1, s.tails(out=0))
        self.assertIn(f"guest migrated to {LAB_IP}:{port}", err)
        self.assertEqual(labkit.load_json(s_json)["status"], "completed")
        last = labkit.ticks(s.stdout())[-1][0]
        self.finish_on(d2, last + 3, came_from=s)
        self.assert_ticks_continue(s.stdout(), d2.stdout())


class StopAndCopyFaults(Failures):
    def test_source_killed_mid_migration(self):
        """SIGKILL of the source in round 1: the destination exits 1 within T + MARGIN s and
        never runs the partial guest."""
        port = labkit.next_port()
        s, d, _, d_json = self.start_pair(port, ("--max-bandwidth", "6M"))
        s.wait_for(r"src: connected, setup .*; round 1", 120, stream="err")
        d.wait_for("incoming migration", 30, stream="err")
        time.sleep(2)
        self.assertNotRegex(s.stderr(), r"src: round 1: \d+ pages", "round 1 ended before the kill")
        s.kill()
        self.assert_dst_failed(d, d_json, time.monotonic(), T + MARGIN)

    def test_destination_killed_in_stop_and_copy(self):
        """SIGKILL of the destination while the source is paused in the final round: the
        source gives up within T + MARGIN s, resumes the guest (errors=0), reports the real
        pause, and its retry migrates the guest to a fresh destination."""
        port = labkit.next_port()
        s, d, s_json, _ = self.start_pair(
            port, STOPCOPY_SRC + ("--migrate-retries", "1", "--retry-delay", "10"))
        s.wait_for(r"src: stop-and-copy: ", 240, stream="err")
        paused = time.monotonic()
        d.kill()
        self.assertNotRegex(s.stderr(), r"\(stop-and-copy\): \d+ pages",
                            "the final round ended before the kill")
        _, failed = self.src_fails(s, paused, T + MARGIN)
        st = labkit.load_json(s_json)  # the failed attempt's (the retry rewrites it)
        d2 = self.fresh_dst(s, port)
        self.assertEqual(st["status"], "failed")
        self.assertGreater(st["downtime_ms"], 0)
        self.assertLessEqual(st["downtime_ms"], (failed - paused + 1) * 1000)
        print(f"  {TRANSPORT}: paused {st['downtime_ms']:.0f} ms", flush=True)
        self.keeps_ticking(s)
        self.retry_completes(s, d2, port, s_json)

    def test_destination_stalled_in_stop_and_copy(self):
        """SIGSTOP of the destination in the final round: the source gives up when its
        stop-and-copy deadline (--timeout T) passes, resumes the guest, reports status failed
        with downtime_ms = the real pause (>= the stall, <= T + 3 s); the destination, let go
        again, resumes no guest; the retry migrates to a fresh destination."""
        port = labkit.next_port()
        s, d, s_json, d_json = self.start_pair(
            port, STOPCOPY_SRC + ("--migrate-retries", "1", "--retry-delay", "10"))
        s.wait_for(r"src: stop-and-copy: ", 240, stream="err")
        paused = time.monotonic()
        d.kill(signal.SIGSTOP)
        try:
            _, failed = self.src_fails(s, paused, T + MARGIN)
            self.assertGreaterEqual(failed - paused, T - 1, "gave up before --timeout passed")
            st = labkit.load_json(s_json)
            self.assertEqual(st["status"], "failed")
            self.assertGreaterEqual(st["downtime_ms"], (T - 1) * 1000)
            self.assertLessEqual(st["downtime_ms"], min(failed - paused + 1, T + 3) * 1000)
            print(f"  {TRANSPORT}: paused {st['downtime_ms']:.0f} ms", flush=True)
        finally:
            d.kill(signal.SIGCONT)
        self.assert_dst_failed(d, d_json, time.monotonic(), T + MARGIN)
        d2 = self.fresh_dst(s, port)
        self.keeps_ticking(s)
        self.retry_completes(s, d2, port, s_json)


class LinkCut(Failures):
    def test_link_cut_mid_migration(self):
        """The link dies in round 1 (labkit.cut_link: TCP, blackhole rules on the migration's
        port; RDMA, eth0 down): both sides fail within T + MARGIN s, the source keeps
        the guest (errors=0); with the link back its retry migrates to a fresh destination.
        Over RDMA the retry is not tried: after a flap of eth0 under it, the lab's rxe0 shows
        ACTIVE but establishes no new rdma_cm connection for any process until it is
        re-created, which needs every process that opened it to exit (librdmacm keeps its
        devices open for a process's life): README, Known issues."""
        port = labkit.next_port()
        retry = ("--migrate-retries", "1", "--retry-delay", "12") if TRANSPORT == "tcp" else ()
        s, d, s_json, d_json = self.start_pair(port, ("--max-bandwidth", "6M") + retry)
        s.wait_for(r"src: connected, setup .*; round 1", 120, stream="err")
        d.wait_for("incoming migration", 30, stream="err")
        time.sleep(2)
        try:
            labkit.cut_link(TRANSPORT, port)
            cut = time.monotonic()
            if TRANSPORT == "tcp":
                # No TCP listener on PORT now: uncut, a connection is refused at once
                # (ECONNREFUSED); cut, the blackhole rule fails the route lookup (EINVAL).
                try:
                    socket.create_connection((LAB_IP, port), timeout=2).close()
                    self.fail("the cut lets a TCP connection through")
                except socket.timeout:
                    pass
                except OSError as e:
                    self.assertEqual(e.errno, errno.EINVAL, f"the cut lets TCP through: {e}")
            else:
                self.assertNotIn("state ACTIVE", labkit.sh("rdma link show rxe0/1"))
            # dst first: when the source hangs, what the destination did is still reported.
            self.assert_dst_failed(d, d_json, cut, T + MARGIN)
            self.src_fails(s, cut, T + MARGIN)
        finally:
            labkit.restore_link(TRANSPORT, port)
        self.assertEqual(labkit.load_json(s_json)["status"], "failed")
        d2 = self.fresh_dst(s, port) if TRANSPORT == "tcp" else None
        self.keeps_ticking(s)
        if d2 is not None:
            self.retry_completes(s, d2, port, s_json)
        else:
            s.send("reboot -f\n")
            self.assertEqual(s.wait(60), 3, s.tails(err=2000, out=0))
            self.assert_ticks_continue(s.stdout())



class Streams(Failures):
    """Parallel streams (--streams N; over RDMA each its own rdma_cm connection, QP and
    registration): the workload guest migrates over 1, 2 and 4 streams, each carrying its
    share; SIGTERM ends a destination receiving over streams at once."""

    def test_workload_migrates_over_1_2_and_4_streams(self):
        for n in (1, 2, 4):
            st = Migrate.migrate_once(self, mem="256M", extra_src=("--streams", str(n)))
            streams = st["streams"]
            if n == 1:
                self.assertEqual(streams, [])
                continue
            self.assertEqual([x["stream"] for x in streams], list(range(n)))
            for x in streams:
                self.assertGreater(x["bytes"], 0, f"stream {x['stream']} carried nothing")
            self.assertEqual(sum(x["bytes"] for x in streams), st["pages_sent"] * 4096)
            print(f"  {n} streams: " + ", ".join(
                f"{x['bytes'] / 2**20:.1f} MiB at {x['rate_mbps']:.0f} Mbit/s"
                for x in streams), flush=True)

    def joined_port(self, d, stream):
        m = d.wait_for(rf"stream {stream} joined from [0-9.]+:(\d+)", 60, stream="err")
        return int(m.group(1))

    def test_sigterm_to_a_destination_receiving_over_streams(self):
        port = labkit.next_port()
        s, d, s_json, d_json = self.start_pair(port, ("--max-bandwidth", "6M", "--streams", "2"))
        self.joined_port(d, 1)
        s.wait_for(r"src: connected, setup .*; round 1", 120, stream="err")
        time.sleep(1)
        d.kill(signal.SIGTERM)
        since = time.monotonic()
        rc = d.wait(10)
        took = time.monotonic() - since
        self.assertNotEqual(rc, 0)
        self.assertLessEqual(took, 2, f"dst took {took:.1f}s to end\n" + d.tails(out=0))
        self.assertIn("stopped by SIGTERM during the incoming migration", d.stderr())
        self.assertEqual(d.stdout(), "", "a guest ran on the destination")
        print(f"  dst ended {took:.2f}s after SIGTERM", flush=True)
        self.src_fails(s, since, T + MARGIN)
        self.keeps_ticking(s)
        s.send("reboot -f\n")
        self.assertEqual(s.wait(60), 3, s.tails(err=2000, out=0))


class StreamsTcp(Streams):
    """Streams over TCP also lose one connection alone (blackhole rules on its port): the
    migration fails on both sides and the source keeps its guest. (RoCE carries every QP of
    a host pair on one UDP port: the RDMA suites cut the whole link, LinkCut.)"""

    def test_one_stream_cut_mid_round_fails_the_migration(self):
        port = labkit.next_port()
        s, d, s_json, d_json = self.start_pair(port, ("--max-bandwidth", "6M", "--streams", "3"))
        peer = self.joined_port(d, 2)
        s.wait_for(r"src: connected, setup .*; round 1", 120, stream="err")
        time.sleep(2)
        try:
            labkit.cut_link("tcp", peer)  # that one connection, by its source port
            cut = time.monotonic()
            self.assert_dst_failed(d, d_json, cut, T + MARGIN)
            # The source learns it from whichever of its connections fails first: the cut
            # stream's own send timing out, or another's once the destination has gone. A
            # stream stalled with data queued can hold the source for its own --timeout after
            # its last progress, which may come later than the cut (seen: 11-20 s with T = 10
            # before the hand-off gave up on a failed stream): bounded by two timeouts.
            self.src_fails(s, cut, 2 * T + MARGIN)
        finally:
            labkit.restore_link("tcp", peer)
        st = labkit.load_json(s_json)
        self.assertEqual(st["status"], "failed")
        self.assertEqual(len(st["streams"]), 3)
        self.keeps_ticking(s)
        s.send("reboot -f\n")
        self.assertEqual(s.wait(60), 3, s.tails(err=2000, out=0))
        self.assert_ticks_continue(s.stdout())


if __name__ == "__main__":
    labkit.main()
