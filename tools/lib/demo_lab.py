"""The demo, run inside the lab by tools/demo: boot Debian's kernel under lmig-rdma with the
verifying workload as a heartbeat, live-migrate it over Soft-RoCE (rxe0) to a second lmig-rdma,
show both consoles and the migration report, then reboot the guest on the destination."""

import os
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                                "tests", "lab"))
import labkit  # noqa: E402

TRANSPORT = os.environ.get("LMIG_TRANSPORT", "rdma")
PORT = 4444


def echo(proc, prefix, stream):
    """Copies PROC's STREAM to our stdout line by line with PREFIX, as it arrives."""
    def run():
        seen = 0
        while True:
            text = proc.stdout() if stream == "out" else proc.stderr()
            while True:
                nl = text.find("\n", seen)
                if nl < 0:
                    break
                line = text[seen:nl].rstrip("\r")
                seen = nl + 1
                if line:
                    print(f"{prefix} {line}", flush=True)
            if proc.p.poll() is not None and seen >= len(text.rstrip()):
                return
            time.sleep(0.1)
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def main():
    stats = os.path.join(labkit.RESULTS, "demo-src.json")
    print(f"demo: lab is up; rxe0 on {labkit.LAB_IP}; migrating over {TRANSPORT}", flush=True)
    dst = labkit.Proc(["dst", "--listen", f"{labkit.LAB_IP}:{PORT}", "--transport", TRANSPORT],
                      "dst")
    dst.wait_for("listening on", 30, stream="err")
    src = labkit.Proc(["src"] + labkit.vm_args(mem="1G", extra_cmdline=labkit.workload(mib=256,
                                                                                       rate=16))
                      + ["--peer", f"{labkit.LAB_IP}:{PORT}", "--transport", TRANSPORT,
                         "--migrate-on-output", "tick 5 ", "--stats-json", stats], "src")
    pumps = [echo(src, "[src console]", "out"), echo(src, "[src vmm]    ", "err"),
             echo(dst, "[dst console]", "out"), echo(dst, "[dst vmm]    ", "err")]
    outcome = src.wait_for(r"migration (completed|failed)", 300, stream="err").group(1)
    if outcome != "completed":
        time.sleep(1)
        print("demo: the migration failed (the guest kept running on the source)", flush=True)
        src.kill()
        dst.kill()
        return 1
    rc = src.wait(60)
    if rc != 0:
        print(f"demo: the source exited {rc}", flush=True)
        dst.kill()
        return 1
    last = labkit.ticks(src.stdout())[-1][0]
    dst.wait_for(rf"tick {last + 5} ", 60)
    dst.send("reboot -f\n")
    rc = dst.wait(60)
    for t in pumps:
        t.join(2)
    seq = labkit.ticks(src.stdout() + dst.stdout())
    nums = [t[0] for t in seq]
    unbroken = nums == list(range(nums[0], nums[0] + len(nums)))
    errors = sum(t[2] for t in seq)
    print(f"\ndemo: heartbeat ticks {nums[0]}..{nums[-1]} across both hosts, "
          f"{'unbroken' if unbroken else 'BROKEN'}, workload errors={errors}; "
          f"destination exited {rc}", flush=True)
    print(f"demo: migration report as JSON: {stats}", flush=True)
    return 0 if (unbroken and errors == 0 and rc == 0) else 1


if __name__ == "__main__":
    sys.exit(main())
