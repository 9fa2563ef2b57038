#!/usr/bin/env python3
"""Check the ptxas report of the built kernels (nvcc_fatbin.py): every kernel of every
architecture without stack frame or register spills (local memory in the hot loop costs more
than the whole memory-bound budget). Prints registers per kernel family.

usage: check_resources.py REPORT
"""
import collections
import re
import sys


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    kernel = arch = None
    stack = None
    rows = []
    for line in open(sys.argv[1], encoding="utf-8"):
        m = re.search(r"Compiling entry function '(\S+)' for '(\S+)'", line)
        if m:
            kernel, arch = m.groups()
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads",
                      line)
        if m and kernel:
            stack = tuple(int(x) for x in m.groups())
            continue
        m = re.search(r"Used (\d+) registers", line)
        if m and kernel and stack is not None:
            rows.append((kernel, arch, int(m.group(1))) + stack)
            kernel = stack = None
    if not rows:
        print(f"{sys.argv[1]}: no ptxas resource lines", file=sys.stderr)
        return 1
    families = collections.defaultdict(list)
    for name, arch_, regs, *_ in rows:
        family = "merge" if "merge" in name else "_".join(name.split("_")[-2:])
        families[(arch_, family)].append(regs)
    for (arch_, family), regs in sorted(families.items()):
        print(f"{arch_:8} {family:10} {len(regs):3} kernels, registers {min(regs)}-{max(regs)}")
    bad = [r for r in rows if r[3] or r[4] or r[5]]
    for name, arch_, regs, st, ss, sl in bad:
        print(f"FAIL {name} ({arch_}): {st} bytes stack frame, {ss}/{sl} bytes spill stores/loads")
    print(f"{len(rows)} kernels, {len(bad)} with stack frame or spills")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
