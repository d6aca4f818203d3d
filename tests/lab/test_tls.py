"""Lab tests for TLS under the TCP transport (transport/tcp/tls.h), on the lab's kernel, which
has kernel TLS: a migration with a key is TLS 1.3 with the record keys in the kernel, and a
capture of the link (tcpdump on the interface the two ends talk over) finds none of the guest's
page content. The control run with --no-tls finds it, so the search can fail.

The guest's workload fills 1 MiB with a marker text it never rewrites (and checks every tick):
pages the migration must carry, with a content the capture is searched for."""

import os
import re
import secrets
import signal
import subprocess
import time

import labkit
from labkit import LAB_IP
from test_migrate import Peers

# Both ends bind the lab's address; traffic between two local addresses goes over loopback.
CAPTURE_IF = "lo"


class Capture:
    """tcpdump of TCP port PORT on CAPTURE_IF into a pcap file, whole packets."""

    def __init__(self, port):
        self.path = os.path.join(labkit.RESULTS, f"tls-capture-{port}-{os.getpid()}.pcap")
        self.p = subprocess.Popen(
            # A 256 MiB capture buffer: the lab's emulated CPUs must not make it drop packets.
            ["tcpdump", "-i", CAPTURE_IF, "-s", "0", "-B", "262144", "-n", "-w", self.path,
             f"tcp port {port}"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE)
        # tcpdump says "listening on ..." once the capture runs.
        deadline = time.monotonic() + 30
        line = b""
        while b"listening on" not in line:
            if time.monotonic() > deadline or self.p.poll() is not None:
                raise AssertionError(f"tcpdump did not start: {line!r}")
            line = self.p.stderr.readline()

    def stop(self):
        """Stops the capture; returns the captured bytes (pcap headers included). Fails if the
        kernel dropped any packet: the search below must see the whole migration."""
        time.sleep(0.5)
        self.p.send_signal(signal.SIGINT)
        _, err = self.p.communicate(timeout=60)
        err = err.decode(errors="replace")
        with open(self.path, "rb") as f:
            data = f.read()
        os.unlink(self.path)
        if not re.search(r"^0 packets dropped by kernel", err, re.M):
            raise AssertionError(f"the capture is incomplete: {err}")
        return data


class Tls(Peers):
    def migrate_captured(self, *extra):
        """Migrates a guest holding the marker under capture; returns (capture, src stats, dst
        stats)."""
        marker = "lmig-secret-" + secrets.token_hex(10)
        port = labkit.next_port()
        cap = Capture(port)
        s_json = os.path.join(labkit.RESULTS, f"tls-src-{port}.json")
        d_json = os.path.join(labkit.RESULTS, f"tls-dst-{port}.json")
        try:
            d = self.dst(port, *extra, stats=d_json)
            wl = labkit.workload(mib=8, rate=1) + f",--marker,{marker}"
            s = self.src(port, labkit.vm_args(mem="256M", extra_cmdline=wl),
                         "--migrate-on-output", "tick 2 ", *extra, stats=s_json)
            self.assertEqual(s.wait(240), 0, self.why_src_failed(s, d))
            last_src = labkit.ticks(s.stdout())[-1][0]
            self.finish_on(d, last_src + 2, came_from=s)
            self.assert_ticks_continue(s.stdout(), d.stdout())
        finally:
            wire = cap.stop()
        return marker.encode(), wire, labkit.load_json(s_json), labkit.load_json(d_json)

    def test_page_data_crosses_the_link_encrypted_by_kernel_tls(self):
        marker, wire, st, dt = self.migrate_captured()
        self.assertEqual(st["status"], "completed")
        for side in (st, dt):
            self.assertIn("TLS 1.3 TLS_AES_256_GCM_SHA384, pre-shared key", side["tls"])
            self.assertIn("kernel TLS", side["tls"])
        # The capture holds the whole migration (pages, headers and TLS records' overhead).
        self.assertGreater(len(wire), st["transferred_bytes"])
        self.assertNotIn(marker, wire, "guest page content in clear on the link")
        self.assertNotIn(marker[:16], wire)
        print(f"  tls: {st['tls']}; {st['transferred_bytes'] / 2**20:.1f} MiB in "
              f"{st['total_time_ms']:.0f} ms, downtime {st['downtime_ms']:.1f} ms; capture "
              f"{len(wire) / 2**20:.1f} MiB, marker absent")

    def test_without_tls_the_same_capture_shows_the_pages(self):
        marker, wire, st, dt = self.migrate_captured("--no-tls")
        self.assertEqual(st["tls"], "")
        self.assertGreater(wire.count(marker), 100, "the control capture must see the pages")


if __name__ == "__main__":
    import unittest
    unittest.main(verbosity=2)
