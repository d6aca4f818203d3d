"""Helpers for lab tests: run lmig-rdma processes, watch their consoles, check the guest's
workload output. Runs inside the lab (tools/lab run), stdlib only."""

import json
import os
import re
import signal
import subprocess
import tempfile
import threading
import time
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LMIG = os.environ.get("LMIG_BIN", os.path.join(ROOT, "build", "lmig-rdma"))
GUEST_INITRD = os.path.join(ROOT, "build", "guest.cpio")
KERNEL = os.environ.get("LAB_KERNEL", "")
RESULTS = os.environ.get("LAB_RESULTS", "/tmp")
LAB_IP = "10.0.2.15"
BASE_CMDLINE = "console=ttyS0 reboot=k panic=-1 pci=off quiet"

_port = [4400 + (os.getpid() % 50) * 10]


def next_port():
    _port[0] += 1
    return _port[0]


class Proc:
    """A running lmig-rdma (or PROGRAM) with stdin as a pipe and stdout/stderr collected by
    threads."""

    def __init__(self, args, name, program=None):
        self.name = name
        # Every lab src/dst (tests, demo, bench) is authenticated, with a fresh key per run.
        self.args = [program or LMIG] + (with_key(args) if program is None else args)
        self.p = subprocess.Popen(self.args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE)
        self.out = bytearray()
        self.err = bytearray()
        self.cv = threading.Condition()
        self.closed = 0  # streams read to their end
        for stream, buf in ((self.p.stdout, self.out), (self.p.stderr, self.err)):
            threading.Thread(target=self._pump, args=(stream, buf), daemon=True).start()

    def _pump(self, stream, buf):
        while True:
            data = stream.read1(65536)
            if not data:
                with self.cv:
                    self.closed += 1
                    self.cv.notify_all()
                break
            with self.cv:
                buf.extend(data)
                self.cv.notify_all()

    def stdout(self):
        with self.cv:
            return self.out.decode(errors="replace")

    def stderr(self):
        with self.cv:
            return self.err.decode(errors="replace")

    def tails(self, err=2500, out=2000):
        """The last ERR characters of this process's stderr and OUT of its console (0: left
        out), labelled with its name: what every failure report carries."""
        parts = [(f"--- {self.name} stderr:", self.stderr(), err),
                 (f"--- {self.name} console:", self.stdout(), out)]
        return "\n".join(f"{label}\n{text[-n:]}" for label, text, n in parts if n)

    def wait_for(self, pattern, timeout, stream="out"):
        """Waits until PATTERN (regex) appears; returns the match or fails with the tails."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self.cv:
            while True:
                text = (self.out if stream == "out" else self.err).decode(errors="replace")
                m = rx.search(text)
                if m:
                    return m
                left = deadline - time.monotonic()
                if left <= 0 or (self.p.poll() is not None and self.closed == 2):
                    break
                self.cv.wait(min(left, 0.5))
        self.dump_state()
        raise AssertionError(
            f"{self.name}: no /{pattern}/ within {timeout}s (exit {self.p.poll()})\n"
            + self.tails())

    def dump_state(self, times=2, gap=2.0):
        """Asks a still-running lmig-rdma for its machine state (SIGQUIT: vCPUs, interrupt
        pins, UART), TIMES times GAP seconds apart, so that a timeout's report says what the
        guest was doing and whether it moves."""
        if self.args[0] != LMIG:
            return
        marker = b"bytes of output pending"
        for i in range(times):
            if self.p.poll() is not None:
                return
            if i:
                time.sleep(gap)
            with self.cv:
                seen = self.err.count(marker)
            self.p.send_signal(signal.SIGQUIT)
            with self.cv:
                self.cv.wait_for(lambda: self.err.count(marker) > seen, 3)

    def send(self, text):
        self.p.stdin.write(text.encode())
        self.p.stdin.flush()

    def close_stdin(self):
        self.p.stdin.close()

    def wait(self, timeout):
        try:
            rc = self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            self.dump_state()
            self.p.kill()
            raise AssertionError(f"{self.name}: still running after {timeout}s\n" + self.tails())
        with self.cv:  # the pump threads read what is left in the pipes
            self.cv.wait_for(lambda: self.closed == 2, 5)
        return rc

    def kill(self, sig=signal.SIGKILL):
        if self.p.poll() is None:
            self.p.send_signal(sig)


def guest_cmdline(extra=""):
    return f"{BASE_CMDLINE} {extra}".strip()


def vm_args(mem="512M", cpus=1, extra_cmdline="", initrd=None):
    return ["--kernel", KERNEL, "--initrd", initrd or GUEST_INITRD, "--mem", mem,
            "--cpus", str(cpus), "--cmdline", guest_cmdline(extra_cmdline)]


def workload(mib=64, rate=8, threads=1):
    return f"lmig.workload=--mib,{mib},--rate,{rate},--threads,{threads}"


TICK = re.compile(r"tick (\d+) verified=(\d+) errors=(\d+)")


def ticks(text):
    return [(int(a), int(b), int(c)) for a, b, c in TICK.findall(text)]


def load_json(path):
    with open(path) as f:
        return json.load(f)


def sh(cmd):
    """Runs CMD (a lab admin command, e.g. `ip rule ...`); fails with its output if it fails."""
    r = subprocess.run(cmd, shell=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       text=True, timeout=60)
    if r.returncode != 0:
        raise AssertionError(f"`{cmd}` failed ({r.returncode}): {r.stdout}")
    return r.stdout


# A link cut on the lab's single address. TCP: `ip link set eth0 down` cuts nothing there (the
# local route for 10.0.2.15 stays and local traffic goes on over loopback: measured 100+ MB/s
# with eth0 down), and the lab has no nft/iptables; policy routing does cut: blackhole rules on
# the migration's port, both directions, placed before the `local` table (moved from priority 0
# to 100), fail route lookups (EINVAL) and drop packets, as a dead cable would. RDMA: those
# rules do not stop rxe0 (a migration ran on through a rule blackholing all traffic to
# 10.0.2.15), `ip link set eth0 down` does (rxe0's port goes down with its netdev). Recreating
# rxe0 afterwards is no way out: `rdma link delete` blocks while any process holds rxe0.
CUT_PREF, LOCAL_PREF = 5, 100


def cut_selectors(port):
    return [f"ipproto tcp dport {port}", f"ipproto tcp sport {port}"]


def cut_link(transport, port):
    if transport != "tcp":
        sh("ip link set eth0 down")
        return
    sh(f"ip rule add pref {LOCAL_PREF} lookup local")
    sh("ip rule del pref 0 lookup local")
    for sel in cut_selectors(port):
        sh(f"ip rule add pref {CUT_PREF} {sel} blackhole")


def restore_link(transport, port):
    """Undoes cut_link (each step tolerated missing, so that it also cleans up a half cut);
    fails if the link is not back: rules gone, eth0 up, rxe0 ACTIVE."""
    if transport != "tcp":
        sh("ip link set eth0 up")
        # What still holds rxe0 (a failed attempt's QPs and CM ids should be gone): after a cut
        # with a live connection no new rdma_cm connection has established in that lab.
        print("  rxe0 after the cut:\n" + sh("rdma resource show qp; rdma resource show cm_id"),
              flush=True)
        deadline = time.monotonic() + 30
        while "state ACTIVE" not in sh("rdma link show rxe0/1"):
            if time.monotonic() > deadline:
                raise AssertionError("rxe0 not ACTIVE 30 s after eth0 up:\n" + sh("rdma link"))
            time.sleep(0.5)
        return
    rules = sh("ip rule show")
    if not re.search(r"^0:\s+from all lookup local", rules, re.M):
        sh("ip rule add pref 0 lookup local")
    for sel in cut_selectors(port):
        subprocess.run(f"ip rule del pref {CUT_PREF} {sel} blackhole", shell=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    subprocess.run(f"ip rule del pref {LOCAL_PREF} lookup local", shell=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rules = sh("ip rule show")
    if "blackhole" in rules or f"{LOCAL_PREF}:" in rules:
        raise AssertionError(f"the lab's link is not restored:\n{rules}")


_key = [None]


def new_key():
    """A fresh migration key file (`lmig-rdma keygen`, mode 0600) in a fresh folder."""
    path = os.path.join(tempfile.mkdtemp(prefix="lmig-key-"), "migration.key")
    subprocess.run([LMIG, "keygen", path], check=True, stdout=subprocess.DEVNULL)
    return path


def migration_key():
    """This test run's key, shared by every src and dst it starts (a fresh one per run)."""
    if _key[0] is None:
        _key[0] = new_key()
    return _key[0]


def with_key(args):
    """ARGS for lmig-rdma with this run's --psk-file added to a src or dst that names no key
    and is not --insecure: every lab migration is authenticated."""
    if args and args[0] in ("src", "dst") and "--psk-file" not in args and \
            "--insecure" not in args:
        return args + ["--psk-file", migration_key()]
    return args


class LabTest(unittest.TestCase):
    procs = []

    def setUp(self):
        self.procs = []
        self.started = time.monotonic()

    def tearDown(self):
        for p in self.procs:
            p.kill()
            try:
                p.p.wait(30)
            except subprocess.TimeoutExpired:
                print(f"  {p.name} (pid {p.p.pid}) survived SIGKILL for 30 s", flush=True)
            for f in (p.p.stdin, p.p.stdout, p.p.stderr):
                try:
                    f.close()
                except (OSError, ValueError):
                    pass
        print(f"  [{self.id().split('.')[-1]}: {time.monotonic() - self.started:.1f}s]",
              flush=True)

    def start(self, args, name):
        p = Proc(args, name)
        self.procs.append(p)
        return p

    def assert_ticks_continue(self, *outputs):
        """The guest's ticks across all hosts form one unbroken sequence with errors=0."""
        joined = "".join(outputs)
        seq = ticks(joined)
        self.assertTrue(seq, "no ticks at all")
        nums = [t[0] for t in seq]
        self.assertEqual(nums, list(range(nums[0], nums[0] + len(nums))),
                         f"tick numbers skipped or repeated: {nums}")
        self.assertNotIn("CORRUPTION", joined)
        self.assertTrue(all(t[2] == 0 for t in seq), f"workload errors: {seq[-1]}")
        return seq


def main():
    if not KERNEL or not os.path.exists(KERNEL):
        raise SystemExit("lab tests run inside the lab: tools/lab run -- python3 " +
                         " ".join(os.sys.argv))
    unittest.main(verbosity=2)
