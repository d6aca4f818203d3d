"""lmig-rdma's answers to bad input: one line naming the problem and the value, a non-zero exit,
and no guest started. Runs on the bare host (stdlib only); ctest passes the binary in $LMIG."""

import os
import socket
import struct
import subprocess
import tempfile
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LMIG = os.environ.get("LMIG", os.path.join(ROOT, "build", "lmig-rdma"))


def kernel():
    return subprocess.run([os.path.join(ROOT, "tools", "lab"), "kernel"], check=True,
                          capture_output=True, text=True).stdout.strip()


class BadInput(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.kernel = kernel()
        cls.tmp = tempfile.TemporaryDirectory()
        # A bzImage whose setup header claims boot protocol 2.00.
        with open(cls.kernel, "rb") as f:
            head = bytearray(f.read(16384))
        head[0x206:0x208] = struct.pack("<H", 0x0200)
        cls.old_kernel = os.path.join(cls.tmp.name, "old-bzImage")
        with open(cls.old_kernel, "wb") as f:
            f.write(head)
        cls.big_initrd = os.path.join(cls.tmp.name, "big.cpio")
        with open(cls.big_initrd, "wb") as f:
            f.truncate(200 << 20)  # sparse

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def fails(self, args, *expect, status=None):
        """Runs lmig-rdma ARGS; asserts a non-zero exit and one stderr line containing EXPECT."""
        p = subprocess.run([LMIG] + args, stdin=subprocess.DEVNULL, capture_output=True,
                           text=True, timeout=60)
        lines = p.stderr.strip().splitlines()
        self.assertNotEqual(p.returncode, 0, p.stderr)
        if status is not None:
            self.assertEqual(p.returncode, status, p.stderr)
        self.assertEqual(len(lines), 1, f"expected one line, got:\n{p.stderr}")
        for e in expect:
            self.assertIn(e, lines[0])
        self.assertEqual(p.stdout, "", "no guest output expected")
        return lines[0]

    def test_missing_kernel(self):
        self.fails(["run", "--kernel", "/nonexistent/bzImage"], "/nonexistent/bzImage",
                   "No such file")

    def test_kernel_is_not_a_bzimage(self):
        self.fails(["run", "--kernel", "/etc/passwd"], "/etc/passwd", "not a bzImage")
        self.fails(["run", "--kernel", "/etc"], "/etc", "not a regular file")

    def test_boot_protocol_too_old(self):
        self.fails(["run", "--kernel", self.old_kernel], "2.00", "too old")

    def test_missing_or_oversized_initrd(self):
        self.fails(["run", "--kernel", self.kernel, "--initrd", "/nonexistent.cpio"],
                   "initrd /nonexistent.cpio")
        self.fails(["run", "--kernel", self.kernel, "--mem", "128M", "--initrd",
                    self.big_initrd], "big.cpio", "does not fit")

    def test_memory_too_small_or_unparsable(self):
        self.fails(["run", "--kernel", self.kernel, "--mem", "1M"], "--mem 1M", "at least")
        self.fails(["run", "--kernel", self.kernel, "--mem", "32M"], "--mem 32MiB",
                   "too small")
        self.fails(["run", "--kernel", self.kernel, "--mem", "12Q"], "--mem '12Q'")
        self.fails(["run", "--kernel", self.kernel, "--mem", "lots"], "--mem 'lots'")

    def test_cpu_count_out_of_range(self):
        self.fails(["run", "--kernel", self.kernel, "--cpus", "0"], "--cpus 0", "1..64")
        self.fails(["run", "--kernel", self.kernel, "--cpus", "65"], "--cpus 65", "1..64")

    def test_no_kvm(self):
        self.fails(["run", "--kernel", self.kernel, "--kvm", "/nonexistent/kvm"],
                   "/nonexistent/kvm")
        self.fails(["run", "--kernel", self.kernel, "--kvm", "/dev/null"], "/dev/null",
                   "not a KVM device")

    def test_bad_peer_and_listen_addresses(self):
        self.fails(["src", "--kernel", self.kernel, "--peer", "nohost"], "--peer 'nohost'",
                   "HOST:PORT")
        self.fails(["src", "--kernel", self.kernel, "--peer", "10.0.0.1:99999"],
                   "10.0.0.1:99999")
        self.fails(["dst", "--listen", "192.0.2.1:4444", "--transport", "tcp", "--insecure"],
                   "192.0.2.1:4444")
        self.fails(["src", "--kernel", self.kernel, "--peer", "10.0.0.1:1",
                    "--max-bandwidth", "fast"], "--max-bandwidth")

    def test_bad_transport_settings(self):
        self.fails(["src", "--kernel", self.kernel, "--peer", "10.0.0.1:1",
                    "--rdma-write-size", "5K"], "--rdma-write-size 5K")
        self.fails(["dst", "--listen", "127.0.0.1:9", "--timeout", "0"], "--timeout 0")
        # Streams: 1..64, over either transport.
        for transport in ("tcp", "rdma"):
            for bad in ("-1", "65"):
                self.fails(["src", "--kernel", self.kernel, "--peer", "10.0.0.1:1",
                            "--transport", transport, "--streams", bad], f"--streams {bad}",
                           "1..64")

    def test_unknown_choice(self):
        self.fails(["run", "--kernel", self.kernel, "--dirty-tracking", "magic"],
                   "--dirty-tracking", "magic")
        self.fails(["src", "--kernel", self.kernel, "--peer", "10.0.0.1:1", "--transport",
                    "carrier-pigeon"], "--transport", "carrier-pigeon")

    def test_keygen_writes_a_private_key_once(self):
        path = os.path.join(self.tmp.name, "migration.key")
        p = subprocess.run([LMIG, "keygen", path], stdin=subprocess.DEVNULL,
                           capture_output=True, text=True, timeout=60)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(len(p.stdout.strip().splitlines()), 1, p.stdout)
        self.assertIn(path, p.stdout)
        self.assertIn("--psk-file", p.stdout)
        st = os.stat(path)
        self.assertEqual(st.st_mode & 0o7777, 0o600)
        self.assertEqual(st.st_size, 32)
        with open(path, "rb") as f:
            key = f.read()
        # An existing file is never overwritten: one line, exit 1, the key unchanged.
        self.fails(["keygen", path], f"key file {path}", "already exists", status=1)
        with open(path, "rb") as f:
            self.assertEqual(f.read(), key)
        self.fails(["keygen", os.path.join(self.tmp.name, "no", "dir", "k")], "No such file",
                   status=1)

    def test_a_key_file_others_can_read_is_refused(self):
        path = os.path.join(self.tmp.name, "shared.key")
        with open(path, "wb") as f:
            f.write(os.urandom(32))
        os.chmod(path, 0o644)
        self.fails(["dst", "--listen", "127.0.0.1:9", "--psk-file", path], path, "mode 0644")
        self.fails(["src", "--kernel", self.kernel, "--peer", "127.0.0.1:9", "--psk-file", path],
                   path, "mode 0644")
        short = os.path.join(self.tmp.name, "short.key")
        with open(short, "wb") as f:
            f.write(b"x" * 16)
        os.chmod(short, 0o600)
        self.fails(["dst", "--listen", "127.0.0.1:9", "--psk-file", short], short)
        # --key (a key on the command line, visible in ps) is gone.
        self.fails(["dst", "--listen", "127.0.0.1:9", "--key", "secret"], "--key")

    def test_a_destination_without_a_key_listens_on_loopback_only(self):
        line = self.fails(["dst", "--listen", "0.0.0.0:4444", "--transport", "tcp"],
                          "--listen 0.0.0.0:4444", "--psk-file", "--insecure")
        self.assertIn("loopback", line)

    def test_tls_flags_are_checked_before_anything_runs(self):
        key = os.path.join(self.tmp.name, "tls.key")
        subprocess.run([LMIG, "keygen", key], check=True, capture_output=True, timeout=60)
        self.fails(["dst", "--listen", "127.0.0.1:9", "--transport", "tcp", "--tls-cert",
                    "/nonexistent/c.pem"], "--tls-key missing", "--tls-ca")
        self.fails(["dst", "--listen", "127.0.0.1:9", "--transport", "rdma", "--psk-file", key,
                    "--no-tls"], "--no-tls", "--transport tcp")
        self.fails(["src", "--kernel", self.kernel, "--peer", "127.0.0.1:9", "--transport",
                    "rdma", "--tls-cert", "a", "--tls-key", "b", "--tls-ca", "c"],
                   "--transport tcp")
        pem = os.path.join(self.tmp.name, "k.pem")
        with open(pem, "w") as f:
            f.write("not a key\n")
        os.chmod(pem, 0o644)
        self.fails(["dst", "--listen", "127.0.0.1:9", "--transport", "tcp", "--tls-cert", pem,
                    "--tls-key", pem, "--tls-ca", pem], f"--tls-key {pem}", "mode 0644")
        os.chmod(pem, 0o600)
        self.fails(["dst", "--listen", "127.0.0.1:9", "--transport", "tcp", "--tls-cert", pem,
                    "--tls-key", pem, "--tls-ca", pem], f"--tls-key {pem}", "not a PEM private key")
        self.fails(["dst", "--listen", "127.0.0.1:9", "--transport", "tcp", "--tls-cert",
                    "/nonexistent/c.pem", "--tls-key", "/nonexistent/k.pem", "--tls-ca",
                    "/nonexistent/ca.pem"], "--tls-key /nonexistent/k.pem")

    def test_destination_refuses_a_stream_that_is_not_a_migration(self):
        # Something that is not lmig-rdma connects: the destination names the problem and
        # exits non-zero without resuming any guest.
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        d = subprocess.Popen([LMIG, "dst", "--listen", f"127.0.0.1:{port}", "--transport", "tcp",
                              "--timeout", "5"], stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(100):
            try:
                c = socket.create_connection(("127.0.0.1", port))
                break
            except ConnectionRefusedError:
                import time
                time.sleep(0.05)
        c.sendall(b"GET / HTTP/1.1\r\nHost: example\r\n\r\n" + b"x" * 64)
        out, err = d.communicate(timeout=30)
        c.close()
        self.assertNotEqual(d.returncode, 0)
        self.assertIn("corrupt stream", err.strip().splitlines()[-1])
        self.assertIn("no guest resumed", err.strip().splitlines()[-1])
        self.assertEqual(out, "")


if __name__ == "__main__":
    unittest.main(verbosity=2)
