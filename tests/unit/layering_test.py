#!/usr/bin/env python3
"""The build's layering holds in the sources: every #include in a library's folder names a
header of that library, of a library it links (directly or through its dependencies), or one
of the dependency-free shared headers of include/lmig. The libraries and their links are read
from CMakeLists.txt's lmig_library() calls, so the two cannot drift apart."""
import os
import re
import sys
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Public headers with an implementation in a library; the rest of include/lmig is header-only
# and free of dependencies (checked below).
PUBLIC_OWNER = {"include/lmig/protocol.h": "protocol", "include/lmig/transport.h": "transport"}


def libraries(cmake_text):
    """name -> (folder, set of direct lmig deps)."""
    libs = {}
    for m in re.finditer(r"lmig_library\((\w+)\s+SOURCES(.*?)\)\n", cmake_text, re.S):
        name, body = m.group(1), m.group(2)
        sources, _, deps = body.partition("DEPS")
        files = sources.split()
        folder = os.path.commonpath([os.path.dirname(f) for f in files])
        if folder.startswith("src/arch"):
            folder = "src/arch"
        libs[name] = (folder, set(re.findall(r"\blmig_(\w+)", deps)))
    return libs


def closure(libs, name):
    seen, todo = set(), [name]
    while todo:
        n = todo.pop()
        if n not in seen:
            seen.add(n)
            todo.extend(libs[n][1])
    return seen


def owner(libs, header):
    if header.startswith("include/lmig/"):
        return PUBLIC_OWNER.get(header, "")  # "": shared, dependency-free
    best = None
    for name, (folder, _) in libs.items():
        if header.startswith(folder + "/") and (best is None or len(folder) > len(libs[best][0])):
            best = name
    return best


def includes(path):
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        return re.findall(r'^#include "([^"]+)"', f.read(), re.M)


def files_under(folder):
    for d, _, names in os.walk(os.path.join(ROOT, folder)):
        for n in names:
            if n.endswith((".cc", ".h")):
                yield os.path.relpath(os.path.join(d, n), ROOT)


class Layering(unittest.TestCase):
    def setUp(self):
        with open(os.path.join(ROOT, "CMakeLists.txt"), encoding="utf-8") as f:
            self.libs = libraries(f.read())

    def test_every_folder_is_a_library(self):
        self.assertGreaterEqual(len(self.libs), 10, self.libs)
        for folder in ["src/base", "src/kvm", "src/machine", "transport", "src/migration", "src/cli"]:
            self.assertIn(folder, [f for f, _ in self.libs.values()])

    def test_links_have_no_cycle(self):
        for name in self.libs:
            for dep in self.libs[name][1]:
                self.assertNotIn(name, closure(self.libs, dep) if dep in self.libs else set(),
                                 f"lmig_{name} and lmig_{dep} link each other")

    def test_includes_follow_the_links(self):
        bad = []
        for name, (folder, _) in self.libs.items():
            allowed = closure(self.libs, name)
            for path in files_under(folder):
                if owner(self.libs, path) != name:
                    continue  # a sub-folder that is a library of its own
                for inc in includes(path):
                    if not inc.startswith(("src/", "include/", "transport/")):
                        continue
                    o = owner(self.libs, inc)
                    if o is None:
                        bad.append(f"{path}: {inc} belongs to no library")
                    elif o and o not in allowed:
                        bad.append(f"{path} (lmig_{name}) includes {inc} of lmig_{o}, "
                                   f"which lmig_{name} does not link")
        self.assertEqual(bad, [])

    def test_shared_public_headers_depend_on_nothing_of_ours(self):
        for path in files_under("include/lmig"):
            if path in PUBLIC_OWNER:
                continue
            for inc in includes(path):
                if inc.startswith(("src/", "include/", "transport/")):
                    self.assertTrue(inc.startswith("include/lmig/") and inc not in PUBLIC_OWNER,
                                    f"{path} includes {inc}")

    def test_a_wrong_include_is_caught(self):
        # The checker itself: a kvm source that reached up into the migration would be found.
        allowed = closure(self.libs, "kvm")
        self.assertNotIn(owner(self.libs, "src/migration/sender.h"), allowed)
        self.assertIn(owner(self.libs, "src/base/unique_fd.h"), allowed)


if __name__ == "__main__":
    sys.exit(unittest.main())
