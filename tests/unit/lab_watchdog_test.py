"""tools/lab stops a lab only when its kernel's watchdog saw every CPU stuck at the same moment
(a wedged lab), not when each CPU was stuck once at different times (the nested guest crawling
on one CPU, which ends by itself). The console excerpts are from real lab runs."""

import importlib.machinery
import importlib.util
import os
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_loader = importlib.machinery.SourceFileLoader("lab", os.path.join(ROOT, "tools", "lab"))
_spec = importlib.util.spec_from_loader("lab", _loader)
lab = importlib.util.module_from_spec(_spec)
_loader.exec_module(lab)

# 2026-11-26, a storm loop: CPU#1 stuck at 734-852 s, CPU#0 at 1286-1344 s; the lab was idle
# and well at 1344 s, and the loop's test passed through the first one.
APART = """[  852.841765] watchdog: BUG: soft lockup - CPU#1 stuck for 118s! [vcpu0:594]
[  852.844369] CPU: 1 PID: 594 Comm: vcpu0 Not tainted 6.1.0-56-amd64 #1  Debian 6.1.192-2
[ 1133.517336] kvm [703]: vcpu0, guest rIP: 0xffffffffa0c7e744 Unhandled WRMSR(0xc0010007) = 0xffff
[ 1344.384951] watchdog: BUG: soft lockup - CPU#0 stuck for 58s! [vcpu0:763]
"""

# 2026-11-25, a whole-lab freeze: both CPUs stuck from ~720 s on.
TOGETHER = """[  764.525099] watchdog: BUG: soft lockup - CPU#0 stuck for 45s! [ksoftirqd/0:14]
[  764.641101] watchdog: BUG: soft lockup - CPU#1 stuck for 45s! [swapper/1:0]
"""


class Wedged(unittest.TestCase):
    def test_cpus_stuck_at_different_times_are_not_a_wedged_lab(self):
        self.assertFalse(lab.wedged(APART, 2))

    def test_every_cpu_stuck_at_once_is(self):
        self.assertTrue(lab.wedged(TOGETHER, 2))

    def test_one_cpu_stuck_is_not(self):
        self.assertFalse(lab.wedged(TOGETHER.splitlines()[0], 2))

    def test_short_lockups_do_not_count(self):
        self.assertFalse(lab.wedged(TOGETHER.replace("45s", "30s"), 2))

    def test_a_lockup_that_began_during_another_overlaps_it(self):
        # CPU#1 stuck 700-800 s; CPU#0's report at 760 s covers 715-760 s.
        text = ("[  760.0] watchdog: BUG: soft lockup - CPU#0 stuck for 45s! [a:1]\n"
                "[  800.0] watchdog: BUG: soft lockup - CPU#1 stuck for 100s! [b:2]\n")
        self.assertTrue(lab.wedged(text, 2))

    def test_one_cpu_lab(self):
        self.assertTrue(lab.wedged(TOGETHER.splitlines()[0], 1))


if __name__ == "__main__":
    unittest.main()
