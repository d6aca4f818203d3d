"""Benchmarks, run inside the lab by tools/bench; every figure of one table comes from one lab run.

  link      ib_write_bw on rxe0 (the link's own limit; best of 64 KiB and 256 KiB messages)
  lmig      lmig-rdma migrating a guest whose memory is mostly non-zero, over RDMA and TCP:
            round-1 throughput, total time, downtime, migration-thread CPU per GiB sent
  qemu      QEMU's own live migration (rdma: and tcp:) of the same guest (same kernel, initramfs,
            workload, memory size, downtime limit), driven over QMP
  boot      time from start to the guest's first userspace line, lmig-rdma run vs QEMU

Writes RESULTS/bench.json and RESULTS/bench.md and prints the table.
"""

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                                "tests", "lab"))
import labkit  # noqa: E402

IP = labkit.LAB_IP
GIB = 1 << 30


def log(msg):
    print(f"bench: {msg}", flush=True)


def ib_write_bw(size, seconds=4, qps=1):
    """Gbit/s (decimal) of one ib_write_bw run over rxe0 with SIZE-byte messages on QPS queue
    pairs."""
    port = str(labkit.next_port() + 10000)
    args = ["ib_write_bw", "-d", "rxe0", "-s", str(size), "-D", str(seconds), "-q", str(qps),
            "-p", port, "--report_gbits"]
    server = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(1)
    client = subprocess.run(args + [IP],
                            capture_output=True, text=True, timeout=seconds + 60)
    server.wait(30)
    m = re.search(rf"^\s*{size}\s+\d+\s+([\d.]+)\s+([\d.]+)", client.stdout, re.M)
    if client.returncode != 0 or not m:
        raise RuntimeError(f"ib_write_bw -s {size} failed:\n{client.stdout}{client.stderr}")
    return float(m.group(2))


def iperf3(streams, seconds=4):
    """Gbit/s (decimal) that iperf3 -P STREAMS moves from the lab's address to itself (the
    two addresses a migration in the lab uses)."""
    port = str(labkit.next_port() + 20000)
    server = subprocess.Popen(["iperf3", "-s", "-1", "-p", port], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        time.sleep(1)
        client = subprocess.run(["iperf3", "-c", IP, "-p", port, "-P", str(streams), "-t",
                                 str(seconds), "-J"], capture_output=True, text=True,
                                timeout=seconds + 60)
        if client.returncode != 0:
            raise RuntimeError(f"iperf3 -P {streams} failed:\n{client.stdout}{client.stderr}")
        return json.loads(client.stdout)["end"]["sum_received"]["bits_per_second"] / 1e9
    finally:
        server.wait(30)


def workload_cmdline(fill_mib):
    return labkit.workload(mib=fill_mib, rate=1)


def lab_cpu_ms():
    """CPU time the lab's kernel has accounted so far on all its CPUs, less the nested guests'
    own (guest time is inside user time in /proc/stat): both VMMs, rxe, the network stack."""
    f = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    user, nice, system, _, _, irq, softirq = f[:7]
    guest, guest_nice = (f[8], f[9]) if len(f) >= 10 else (0, 0)
    busy = user + nice + system + irq + softirq - guest - guest_nice
    return busy * 1000.0 / os.sysconf("SC_CLK_TCK")


def lmig_migrate(transport, mem, fill_mib, extra=()):
    """One lmig-rdma migration (EXTRA: flags for both sides); returns the source's stats, with
    lab_cpu_ms: the lab's CPU outside the guests from the source's connect to its result."""
    port = labkit.next_port()
    s_json = os.path.join(labkit.RESULTS, f"lmig-{transport}-{port}-src.json")
    dst = labkit.Proc(["dst", "--listen", f"{IP}:{port}", "--transport", transport, *extra],
                      "dst")
    dst.wait_for("listening on", 30, stream="err")
    src = labkit.Proc(["src"] + labkit.vm_args(mem=mem, extra_cmdline=workload_cmdline(fill_mib))
                      + ["--peer", f"{IP}:{port}", "--transport", transport, *extra,
                         "--migrate-on-output", "tick 2 ", "--stats-json", s_json], "src")
    src.wait_for(r"src: connected", 900, stream="err")
    cpu0 = lab_cpu_ms()
    outcome = src.wait_for(r"migration (completed|failed)", 900, stream="err").group(1)
    lab_cpu = lab_cpu_ms() - cpu0
    rc = src.wait(60) if outcome == "completed" else None
    if rc != 0:
        src.kill()
        dst.kill()
        raise RuntimeError(f"lmig-rdma over {transport} failed:\n{src.tails(err=3000, out=0)}")
    last = labkit.ticks(src.stdout())[-1][0]
    dst.wait_for(rf"tick {last + 2} ", 120)
    dst.send("reboot -f\n")
    dst.wait(60)
    seq = labkit.ticks(src.stdout() + dst.stdout())
    if any(t[2] for t in seq) or "CORRUPTION" in dst.stdout():
        raise RuntimeError(f"lmig-rdma over {transport}: the workload saw corrupted memory")
    st = labkit.load_json(s_json)
    st["lab_cpu_ms"] = lab_cpu
    return st


class Qmp:
    def __init__(self, path):
        for _ in range(200):
            try:
                self.sock = socket.socket(socket.AF_UNIX)
                self.sock.connect(path)
                break
            except OSError:
                time.sleep(0.1)
        else:
            raise RuntimeError(f"no QMP socket at {path}")
        self.f = self.sock.makefile("rw")
        self.f.readline()  # greeting
        self.cmd("qmp_capabilities")

    def cmd(self, name, **args):
        self.f.write(json.dumps({"execute": name, "arguments": args}) + "\n")
        self.f.flush()
        while True:
            reply = json.loads(self.f.readline())
            if "return" in reply:
                return reply["return"]
            if "error" in reply:
                raise RuntimeError(f"QMP {name}: {reply['error']}")


# The QEMU peer (--qemu): "system" is Debian's own package (7.2 on Debian 12), "backports" the
# backports suite's (10.0) that tools/lab unpacks into its cache; tools/lab names both in the lab.
QEMU = {"bin": "qemu-system-x86_64"}


def pick_qemu(which):
    path = {"system": os.environ.get("LAB_QEMU_SYSTEM"),
            "backports": os.environ.get("LAB_QEMU_BACKPORTS")}.get(which, which)
    if not path:
        sys.exit(f"bench: no {which} QEMU in this lab (tools/lab qemu --which {which} fetches it)")
    QEMU["bin"] = path
    out = subprocess.run([path, "--version"], stdout=subprocess.PIPE, text=True).stdout
    return out.split("\n")[0]


def qemu_args(mem, cmdline, qmp, incoming=None):
    args = [QEMU["bin"], "-enable-kvm", "-cpu", "host", "-machine", "pc", "-m", mem,
            "-smp", "1", "-nodefaults", "-no-user-config", "-display", "none", "-serial", "stdio",
            "-kernel", labkit.KERNEL, "-initrd", labkit.GUEST_INITRD, "-append", cmdline,
            "-qmp", f"unix:{qmp},server=on,wait=off"]
    if incoming:
        args += ["-incoming", incoming]
    return args


def spawn(args, name):
    """A labkit.Proc running another program (QEMU)."""
    return labkit.Proc(args[1:], name, program=args[0])


def qemu_migrate(transport, mem, fill_mib, multifd=0):
    """The peer QEMU migrating the same guest (MULTIFD > 0: over that many multifd channels,
    TCP); returns query-migrate's answer (or the error)."""
    port = labkit.next_port()
    cmdline = labkit.guest_cmdline(workload_cmdline(fill_mib))
    uri = f"{transport}:{IP}:{port}"
    dq, sq = f"/tmp/qmp-dst-{port}", f"/tmp/qmp-src-{port}"
    # Multifd is set on the destination before it listens: -incoming defer, then
    # migrate-incoming.
    dst = spawn(qemu_args(mem, cmdline, dq, incoming="defer" if multifd else uri), "qemu-dst")
    src = spawn(qemu_args(mem, cmdline, sq), "qemu-src")
    try:
        src.wait_for("tick 2 ", 300)
        d = Qmp(dq)
        q = Qmp(sq)
        if multifd:
            for side in (d, q):
                side.cmd("migrate-set-capabilities",
                         capabilities=[{"capability": "multifd", "state": True}])
                side.cmd("migrate-set-parameters", **{"multifd-channels": multifd})
            d.cmd("migrate-incoming", uri=uri)
        # Same downtime target as lmig-rdma's default, and no bandwidth cap (QEMU's default
        # caps migration at 128 MiB/s).
        q.cmd("migrate-set-parameters", **{"downtime-limit": 50, "max-bandwidth": 100 * GIB})
        q.cmd("migrate", uri=uri)
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            info = q.cmd("query-migrate")
            if info.get("status") in ("completed", "failed", "cancelled"):
                break
            time.sleep(0.2)
        else:
            info = {"status": "timed out"}
        # QEMU 7.2 sets "completed" before its migration thread computes total-time and
        # downtime (migration_calculate_complete runs after the state change; a later upstream
        # patch moved it before), so a query in between reads 0 for both: ask again until
        # they are filled in.
        settle = time.monotonic() + 10
        while (info.get("status") == "completed" and not info.get("total-time")
               and time.monotonic() < settle):
            time.sleep(0.2)
            info = q.cmd("query-migrate")
        if info.get("status") == "completed":
            dst.wait_for(r"tick \d+ verified", 60)
            seq = labkit.ticks(dst.stdout())
            if any(t[2] for t in seq) or "CORRUPTION" in dst.stdout():
                info["status"] = "corrupted"
        return info
    except (RuntimeError, AssertionError) as e:
        return {"status": "failed", "error": str(e)[:500]}
    finally:
        src.kill()
        dst.kill()
        src.p.wait()
        dst.p.wait()


def boot_time(cmd, mem="512M"):
    """Seconds from start to the guest's first userspace line."""
    start = time.monotonic()
    if cmd == "lmig":
        p = labkit.Proc(["run"] + labkit.vm_args(mem=mem), "run")
    else:
        p = spawn(qemu_args(mem, labkit.guest_cmdline(), f"/tmp/qmp-boot-{os.getpid()}"), "qemu")
    try:
        p.wait_for("userspace up", 120)
        return time.monotonic() - start
    finally:
        p.kill()
        p.p.wait()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mem", default="2G")
    ap.add_argument("--fill-mib", type=int, default=1700)
    ap.add_argument("--skip-qemu", action="store_true")
    ap.add_argument("--qemu", default="system", help="the QEMU peer: system, backports or a path")
    ap.add_argument("--tls-cost", type=int, metavar="REPS", default=0,
                    help="only the cost of TLS over TCP: REPS migrations with TLS and REPS "
                         "with --no-tls, interleaved; medians and ranges")
    ap.add_argument("--against", metavar="BIN",
                    help="only this build against another lmig-rdma binary BIN (e.g. an "
                         "earlier commit's): --reps migrations each over --transport, "
                         "interleaved; medians and ranges")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--transport", choices=("rdma", "tcp"),
                    help="with --against (default rdma) or --streams (default tcp)")
    ap.add_argument("--streams", metavar="N,N,...",
                    help="only each stream count over --transport against the link with N "
                         "flows (TCP, --no-tls: iperf3 -P N; RDMA: ib_write_bw -q N) and, with "
                         "--multifd, the QEMU peer (TCP: multifd with N channels; RDMA: its "
                         "one-QP migration), --reps runs each, interleaved; medians and ranges")
    ap.add_argument("--multifd", action="store_true",
                    help="with --streams: the --qemu peer's multifd migration as well")
    a = ap.parse_args()
    a.transport = a.transport or ("tcp" if a.streams else "rdma")
    if a.streams:
        return streams_scan(a)
    if a.tls_cost:
        return tls_cost(a)
    if a.against:
        return against(a)
    r = {"guest_mem": a.mem, "fill_mib": a.fill_mib, "qemu": pick_qemu(a.qemu)}
    log(f"QEMU peer: {r['qemu']}")

    log("boot time, lmig-rdma run vs QEMU (3 runs each, best)")
    r["boot_lmig_s"] = min(boot_time("lmig") for _ in range(3))
    r["boot_qemu_s"] = min(boot_time("qemu") for _ in range(3))

    log("link limit: ib_write_bw on rxe0")
    r["ib_write_bw_gbps"] = {str(s): ib_write_bw(s) for s in (65536, 262144)}
    link = max(r["ib_write_bw_gbps"].values())
    r["link_gbps"] = link

    for t in ("rdma", "tcp"):
        log(f"lmig-rdma over {t}: {a.mem} guest, {a.fill_mib} MiB non-zero")
        st = lmig_migrate(t, a.mem, a.fill_mib)
        r[f"lmig_{t}"] = st
    if not a.skip_qemu:
        for t in ("rdma", "tcp"):
            log(f"QEMU over {t}: same guest")
            r[f"qemu_{t}"] = qemu_migrate(t, a.mem, a.fill_mib)
    # The link measured again after the migrations: rxe's rate drifts under TCG.
    r["ib_write_bw_after_gbps"] = ib_write_bw(65536)

    return write_results("bench", r, render(r))


def median(xs):
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2


def table(runs, modes, title):
    """A markdown table of medians (min-max) over RUNS[mode] for each of MODES (two), with the
    ratio of the medians."""
    measures = [
        ("setup (ms)", lambda st: st["setup_time_ms"], 0),
        ("of which memory registration (ms)", lambda st: st["registration_ms"], 0),
        ("round-1 throughput (Gbit/s)", lambda st: st["per_round"][0]["rate_mbps"] / 1000.0, 3),
        ("total migration time (ms)", lambda st: st["total_time_ms"], 0),
        ("downtime (ms)", lambda st: st["downtime_ms"], 1),
        ("migration-thread CPU per GiB sent (ms)",
         lambda st: st["cpu_ms"] / (st["transferred_bytes"] / GIB), 0),
    ]
    lines = [title, f"| measure | {modes[0]} | {modes[1]} | ratio of medians |", "|---|---|---|---|"]
    for name, f, digits in measures:
        cells, meds = [], []
        for mode in modes:
            xs = [f(st) for st in runs[mode]]
            meds.append(median(xs))
            cells.append(f"{median(xs):.{digits}f} ({min(xs):.{digits}f}-{max(xs):.{digits}f})")
        ratio = f"{meds[0] / meds[1]:.2f}" if meds[1] else "-"
        lines.append(f"| {name} | {cells[0]} | {cells[1]} | {ratio} |")
    return "\n".join(lines) + "\n"


def write_results(name, data, tbl):
    """RESULTS/NAME.json (DATA) and RESULTS/NAME.md (the table TBL), and TBL printed."""
    with open(os.path.join(labkit.RESULTS, f"{name}.json"), "w") as f:
        json.dump(data, f, indent=2)
    with open(os.path.join(labkit.RESULTS, f"{name}.md"), "w") as f:
        f.write(tbl)
    print(tbl, flush=True)
    return 0


def against(a):
    """This build's migrations against another binary's, interleaved so that drift in the
    lab's speed hits both alike (each binary migrates to itself)."""
    this = labkit.LMIG
    runs = {"this build": [], "other": []}
    for i in range(a.reps):
        for mode, binary in (("this build", this), ("other", a.against)):
            log(f"{mode} ({binary}) over {a.transport}, run {i + 1} of {a.reps}")
            labkit.LMIG = binary
            try:
                runs[mode].append(lmig_migrate(a.transport, a.mem, a.fill_mib))
            finally:
                labkit.LMIG = this
    return write_results(
        "against", {"against": a.against, "transport": a.transport, "mem": a.mem,
                    "fill_mib": a.fill_mib, "runs": runs},
        table(runs, ("this build", "other"),
              f"{a.transport}, guest {a.mem} with {a.fill_mib} MiB non-zero; {a.reps} runs "
              f"each, interleaved; median (min-max). Other: {a.against}.\n"))


def streams_scan(a):
    """Migrations with N streams against the link with N flows, measured next to each run, for
    each N, interleaved: over TCP (--no-tls: iperf3 is plain too) iperf3 -P N, over RDMA
    ib_write_bw -q N (256 KiB messages, lmig-rdma's WRITE size)."""
    rdma = a.transport == "rdma"
    counts = [int(n) for n in a.streams.split(",")]
    runs = {n: [] for n in counts}
    links = {n: [] for n in counts}
    qemu = {n: [] for n in counts}
    qemu_name = pick_qemu(a.qemu) if a.multifd else ""
    link_name = "ib_write_bw -q N" if rdma else "iperf3 -P N"
    for i in range(a.reps):
        for n in counts:
            log(f"{link_name.replace('N', str(n))}, run {i + 1} of {a.reps}")
            links[n].append(ib_write_bw(262144, qps=n) if rdma else iperf3(n))
            log(f"lmig-rdma over {a.transport}, --streams {n}, run {i + 1} of {a.reps}: "
                f"{a.mem} guest, {a.fill_mib} MiB non-zero")
            extra = ("--streams", str(n)) if rdma else ("--no-tls", "--streams", str(n))
            runs[n].append(lmig_migrate(a.transport, a.mem, a.fill_mib, extra))
            if a.multifd:
                # QEMU's RDMA migration has one queue pair and no multifd: its one-QP run
                # stands beside each N.
                log(f"{qemu_name} {'rdma (one QP)' if rdma else f'multifd, {n} channels'}, "
                    f"run {i + 1} of {a.reps}")
                qemu[n].append(qemu_migrate(a.transport, a.mem, a.fill_mib,
                                            multifd=0 if rdma else n))

    def cell(xs, digits):
        return f"{median(xs):.{digits}f} ({min(xs):.{digits}f}-{max(xs):.{digits}f})"

    def ratio_of(x, y):
        return f"{x / y:.2f}" if y > 0 else "-"

    what = "RDMA" if rdma else "TCP without TLS"
    lines = [f"{what}, guest {a.mem} with {a.fill_mib} MiB non-zero; {a.reps} runs "
             f"each, interleaved; median (min-max).\n",
             f"| streams | {link_name} (Gbit/s) | round-1 throughput (Gbit/s) | ratio | "
             "total (ms) | downtime (ms) | CPU per GiB sent (ms) | lab CPU per GiB (ms) |",
             "|---|---|---|---|---|---|---|---|"]
    for n in counts:
        r1 = [st["per_round"][0]["rate_mbps"] / 1000.0 for st in runs[n]]
        lines.append(
            f"| {n} | {cell(links[n], 3)} | {cell(r1, 3)} | "
            f"{ratio_of(median(r1), median(links[n]))} | "
            f"{cell([st['total_time_ms'] for st in runs[n]], 0)} | "
            f"{cell([st['downtime_ms'] for st in runs[n]], 1)} | "
            f"{cell([st['cpu_ms'] / (st['transferred_bytes'] / GIB) for st in runs[n]], 0)} | "
            f"{cell([st['lab_cpu_ms'] / (st['transferred_bytes'] / GIB) for st in runs[n]], 0)} |")
    if a.multifd:
        peer = ("its RDMA migration (one queue pair, no multifd)" if rdma
                else "multifd with the same number of channels")
        lines += ["", f"Against {qemu_name}, {peer} (ratios of medians, lmig-rdma / QEMU):", "",
                  "| streams | QEMU total (ms) | QEMU downtime (ms) | total ratio | "
                  "downtime ratio | QEMU runs completed |", "|---|---|---|---|---|---|"]
        for n in counts:
            ok = [q for q in qemu[n] if q.get("status") == "completed"]
            if not ok:
                lines.append(f"| {n} | - | - | - | - | 0 of {len(qemu[n])} |")
                continue
            qt = [q["total-time"] for q in ok]
            qd = [q["downtime"] for q in ok]
            mt = median([st["total_time_ms"] for st in runs[n]])
            md = median([st["downtime_ms"] for st in runs[n]])
            lines.append(f"| {n} | {cell(qt, 0)} | {cell(qd, 0)} | {mt / median(qt):.2f} | "
                         f"{md / median(qd):.2f} | {len(ok)} of {len(qemu[n])} |")
    return write_results(
        "streams", {"mem": a.mem, "fill_mib": a.fill_mib, "reps": a.reps,
                    "transport": a.transport, "link": link_name,
                    "link_gbps": {str(n): links[n] for n in counts},
                    "qemu": qemu_name, "qemu_multifd": {str(n): qemu[n] for n in counts},
                    "runs": {str(n): runs[n] for n in counts}},
        "\n".join(lines) + "\n")


def tls_cost(a):
    """TCP migrations of the same guest with TLS (the default with a key) and with --no-tls,
    interleaved so that drift in the lab's speed hits both alike."""
    runs = {"tls": [], "plain": []}
    for i in range(a.tls_cost):
        for mode, extra in (("tls", ()), ("plain", ("--no-tls",))):
            log(f"TCP {mode}, run {i + 1} of {a.tls_cost}: {a.mem} guest, {a.fill_mib} MiB "
                f"non-zero")
            runs[mode].append(lmig_migrate("tcp", a.mem, a.fill_mib, extra))
    return write_results(
        "tls-cost", {"guest_mem": a.mem, "fill_mib": a.fill_mib, "reps": a.tls_cost,
                     "runs": runs},
        table(runs, ("tls", "plain"),
              f"Guest: {a.mem}, {a.fill_mib} MiB non-zero; {a.tls_cost} runs each, "
              f"interleaved; median (min-max). TLS: {runs['tls'][0]['tls']}.\n"))


def render(r):
    lines = []
    link = r["link_gbps"]
    rd, tc = r["lmig_rdma"], r["lmig_tcp"]

    def round1_gbps(st):
        return st["per_round"][0]["rate_mbps"] / 1000.0

    def cpu_per_gib(st):
        return st["cpu_ms"] / (st["transferred_bytes"] / GIB)

    def user_per_gib(st):
        return st["cpu_user_ms"] / (st["transferred_bytes"] / GIB)

    lines.append(f"Guest: {r['guest_mem']}, {r['fill_mib']} MiB of it non-zero (workload "
                 f"rewriting 1 MiB/s and verifying the rest).\n")
    lines.append("| measure | lmig-rdma | reference | ratio |")
    lines.append("|---|---|---|---|")
    lines.append(f"| RDMA round-1 throughput vs `ib_write_bw` (link limit) | "
                 f"{round1_gbps(rd):.3f} Gbit/s | {link:.3f} Gbit/s "
                 f"(64K {r['ib_write_bw_gbps']['65536']:.3f}, 256K "
                 f"{r['ib_write_bw_gbps']['262144']:.3f}; after: "
                 f"{r['ib_write_bw_after_gbps']:.3f}) | {round1_gbps(rd) / link:.2f} |")
    lines.append(f"| migration-thread CPU per GiB sent, RDMA vs TCP | {cpu_per_gib(rd):.0f} ms "
                 f"| {cpu_per_gib(tc):.0f} ms (TCP) | {cpu_per_gib(rd) / cpu_per_gib(tc):.2f} |")
    lines.append(f"| of which user space (the VMM's own work), RDMA vs TCP | "
                 f"{user_per_gib(rd):.0f} ms | {user_per_gib(tc):.0f} ms (TCP) | "
                 f"{user_per_gib(rd) / max(user_per_gib(tc), 1e-9):.2f} |")
    for t in ("rdma", "tcp"):
        st = r[f"lmig_{t}"]
        q = r.get(f"qemu_{t}")
        qok = q is not None and q.get("status") == "completed"

        def ratio(mine, theirs):
            return f"{mine / theirs:.2f}" if qok and theirs else "-"
        # A completed migration never takes 0 ms: a 0 here means QEMU had still not filled in
        # its figures when qemu_migrate stopped asking (its completion race), "not reported".
        qtotal = (q.get("total-time") or None) if qok else None
        qdown = (q.get("downtime") or None) if qok else None
        qmbps = q.get("ram", {}).get("mbps") if qok else None
        qdesc = (lambda v, unit: f"{v:.1f} {unit}" if v is not None else
                 "not reported by QEMU" if qok else
                 f"QEMU {q.get('status') if q else 'not run'}")
        if st.get("tls"):
            lines.append(f"| {t.upper()} connection | {st['tls']} | QEMU: none | - |")
        lines.append(f"| {t.upper()} total migration time vs QEMU | {st['total_time_ms']:.0f} ms "
                     f"| {qdesc(qtotal, 'ms')} | {ratio(st['total_time_ms'], qtotal)} |")
        lines.append(f"| {t.upper()} downtime vs QEMU | {st['downtime_ms']:.1f} ms "
                     f"| {qdesc(qdown, 'ms')} | {ratio(st['downtime_ms'], qdown)} |")
        mine_mbps = st["transferred_bytes"] * 8 / (st["total_time_ms"] * 1000)
        lines.append(f"| {t.upper()} average throughput vs QEMU | {mine_mbps:.0f} Mbit/s "
                     f"| {qdesc(qmbps, 'Mbit/s')} | {ratio(mine_mbps, qmbps)} |")
    lines.append(f"| boot to first userspace line vs QEMU | {r['boot_lmig_s']:.2f} s "
                 f"| {r['boot_qemu_s']:.2f} s | {r['boot_lmig_s'] / r['boot_qemu_s']:.2f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
