"""Lab tests for the stop-and-copy pause (issue 16), over the transport in LMIG_TRANSPORT: an
idle guest and the workload guest dirtying fast, each migrated once. The source's report must
break the pause down into phases (the destination's from its ACK) that add up to the measured
downtime within 10%, none missing, and the downtime must stay within the target plus the error
the policy's own estimate states. LMIG_DOWNTIME_VERBOSE=1 prints each source report; LMIG_DOWNTIME_ARGS adds flags to both
sides (for measurements, e.g. "--rdma-busy-poll")."""

import os

import labkit
from labkit import LAB_IP
from test_migrate import Peers, stats_path

TRANSPORT = os.environ.get("LMIG_TRANSPORT", "tcp")
TARGET_MS = 50
EXTRA = os.environ.get("LMIG_DOWNTIME_ARGS", "").split()


class Downtime(Peers):
    def migrate(self, vm, trigger, name):
        port = labkit.next_port()
        s_json, d_json = stats_path(f"{name}-src"), stats_path(f"{name}-dst")
        # Over TCP without TLS: the lab's emulated CPU runs AES-GCM ~150x slower than a real
        # one (docs/benchmarks.md), which made the busy guest's pre-copy crawl past the lab's
        # timeout; the pause's mechanics are the same either way, and lab_tls covers TLS.
        plain = ("--no-tls",) if TRANSPORT == "tcp" else ()
        d = self.dst(port, *plain, *EXTRA, stats=d_json)
        s = self.src(port, vm, "--migrate-on-output", trigger,
                     "--downtime-target", str(TARGET_MS), *plain, *EXTRA, stats=s_json)
        self.assertEqual(s.wait(240), 0, self.why_src_failed(s, d))
        st = labkit.load_json(s_json)
        self.assertEqual(st["status"], "completed", s.tails(err=3000, out=0))
        return s, d, st

    def check_pause(self, st, report):
        down = st["downtime_ms"]
        ph = st["downtime_phases"]
        names = [p["name"] for p in ph["phases"]]
        self.assertEqual(ph["missing"], [], report)
        for want in ("vcpus_stopped", "dirty_harvest", "final_pages_sent", "final_pages_landed",
                     "state_saved", "state_sent", "complete_sent", "dst.complete_checked",
                     "dst.state_restored", "dst.vcpus_resumed", "ack_round_trip",
                     "dst.state_validated"):
            self.assertIn(want, names, report)
        summed = sum(p["ms"] for p in ph["phases"] if not p.get("concurrent"))
        self.assertAlmostEqual(summed, ph["sum_ms"], delta=0.01)
        self.assertLessEqual(abs(down - summed), 0.10 * down, report)
        est = st["downtime_estimate"]
        print(f"  {TRANSPORT}: downtime {down:.1f} ms, phases sum {summed:.1f} ms, estimate "
              f"{est['total_ms']:.1f} +- {est['error_ms']:.1f} ms (pages {est['pages_ms']:.1f}, "
              f"fixed {est['fixed_ms']:.1f}), rounds {st['rounds']}, throttle "
              f"{st['max_throttle_pct']}%", flush=True)
        if os.environ.get("LMIG_DOWNTIME_VERBOSE"):
            print(report, flush=True)
        top = sorted((p for p in ph["phases"] if not p.get("concurrent")),
                     key=lambda p: -p["ms"])[:4]
        print("    largest phases: " + ", ".join(f"{p['name']} {p['ms']:.1f} ms" for p in top),
              flush=True)
        # The policy either met the target in its own model or said it could not.
        if est["target_met"]:
            self.assertLessEqual(down, TARGET_MS + est["error_ms"], report)
        else:
            self.assertIn("cannot", est["reason"], report)

    def test_idle_guest(self):
        s, d, st = self.migrate(labkit.vm_args(mem="512M", cpus=2), "shell ready", "idle")
        self.check_pause(st, s.tails(err=4000, out=0))
        d.send("echo alive-$((6*7))\n")
        d.wait_for("alive-42", 60)
        d.send("reboot -f\n")
        self.assertEqual(d.wait(60), 0, d.tails(err=2000, out=0))

    def test_workload_dirtying_fast(self):
        wl = labkit.workload(mib=64, rate=32, threads=2)
        s, d, st = self.migrate(labkit.vm_args(mem="512M", cpus=2, extra_cmdline=wl),
                                "tick 3 ", "busy")
        self.check_pause(st, s.tails(err=4000, out=0))
        last = labkit.ticks(s.stdout())[-1][0]
        self.finish_on(d, last + 2, came_from=s)
        self.assert_ticks_continue(s.stdout(), d.stdout())


if __name__ == "__main__":
    labkit.main()
