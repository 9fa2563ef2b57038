#!/usr/bin/env python3
"""Check the ptxas reports of the built kernels (nvcc_fatbin.py, one per nvcc translation unit):
every kernel of every architecture without stack frame or register spills (local memory in the
hot loop costs more than the whole memory-bound budget; known exceptions: SPILL_ALLOWED),
every report with kernels, every kernel
built for each architecture of --archs and in one report only. Prints registers per kernel
family.

usage: check_resources.py [--archs sm_80,sm_90a] REPORT...
"""
import collections
import os
import re
import sys


# Known spills, with the bytes allowed: the sm_90a prefill kernels at head_dim 128 and 256. Their
# consumer warpgroups hold O, S of the next block and P of the last one at once (the overlapped
# schedule; 232 or 240 registers after setmaxnreg) and keep per-pass values (pass bounds, row
# positions, barrier ids) in local memory: 6 L1-resident loads and 1 store per key block of 128
# keys at head_dim 128, the rest in the per-pass set-up and the custom-mask path (seen in the
# SASS, 2026-12-06). To remove.
# The producer warpgroup (40 registers, 24 at head_dim 256) spills a few values of its gather
# path (page sizes TMA cannot box) at head_dim 64 and 256.
# 2026-12-07: load_q's batched loads (4 units of 2 x 16 bytes in flight per thread) and
# store_partial's unrolled rounds raised these from 264/216 bytes (head_dim 128) and 60/108
# (head_dim 256): load_q alone 288/240 and 156/208, store_partial alone 288/232 and 60/108
# (sm_90a builds of each change alone). Measured together on an H100 (bench/RESULTS.md,
# 2026-12-07 late morning); the Q loads' share of that gain is not measured apart yet.
# 2026-12-07 (evening): each prefill kernel holds its passes twice, with the plan's variant
# options and with them compiled out (kernels/prefill.cuh, kOptionFlags); ptxas reports the
# kernel's frame over both. In the SASS (cuobjdump, nvcc 13.0) the copy without options has no
# spill in its key loop (sm_90a head_dim 128: 2 stores and 2 loads per pass, none per key
# block; sm_80 staged head_dim 128: 11 spill instructions, all in the per-item set-up); the
# rest are the options copy's. The staged sm_80 kernels at head_dim 128 with 128-row tiles
# (fp8 or the other 16-bit KV dtype) spill in the combined kernel only, neither copy built alone.
# 2026-12-07 (night): the fp8 K/V kernels (flp_prefill90_<q>_<e4m3|e5m2>_d<D>). Their producer
# warpgroup's widening warps (40 registers) keep the work-list walk (list, item, pass) in local
# memory around the widening loop, which itself has none (SASS, nvcc 13.0: the spill
# instructions sit before and after each tile's loop, about ten per tile of 1024 chunks).
SPILL_ALLOWED = {
    ("flp_prefill90_bf16_d64", "sm_90a"): 40,
    ("flp_prefill90_f16_d64", "sm_90a"): 40,
    ("flp_prefill90_bf16_d128", "sm_90a"): 340,
    ("flp_prefill90_f16_d128", "sm_90a"): 340,
    ("flp_prefill90_bf16_d256", "sm_90a"): 384,
    ("flp_prefill90_f16_d256", "sm_90a"): 384,
}
for _q in ("bf16", "f16"):
    for _kv in ("e4m3", "e5m2"):
        SPILL_ALLOWED[(f"flp_prefill90_{_q}_{_kv}_d64", "sm_90a")] = 180
        SPILL_ALLOWED[(f"flp_prefill90_{_q}_{_kv}_d128", "sm_90a")] = 408
for _q, _kvs in (("bf16", ("f16", "e4m3", "e5m2")), ("f16", ("bf16", "e4m3", "e5m2"))):
    for _kv in _kvs:
        SPILL_ALLOWED[(f"flp_prefill_{_q}_{_kv}_d128_t128", "sm_80")] = 100
        SPILL_ALLOWED[(f"flp_prefill_{_q}_{_kv}_d128_t128", "sm_90a")] = 128

def read_report(path):
    """(kernel, arch, registers, stack bytes, spill store bytes, spill load bytes) per entry."""
    kernel = arch = None
    stack = None
    rows = []
    for line in open(path, encoding="utf-8"):
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
    return rows


def main() -> int:
    args = sys.argv[1:]
    archs = None
    if len(args) >= 2 and args[0] == "--archs":
        archs = set(args[1].split(","))
        args = args[2:]
    if not args or any(a.startswith("-") for a in args):
        print(__doc__, file=sys.stderr)
        return 2
    failures = []
    rows = []
    report_of = {}  # kernel -> the report that builds it
    for path in args:
        report_rows = read_report(path)
        if not report_rows:
            failures.append(f"{path}: no ptxas resource lines")
        for name in sorted({r[0] for r in report_rows}):
            if name in report_of:
                failures.append(f"{name} is built by two units: {os.path.basename(report_of[name])}"
                                f" and {os.path.basename(path)}")
            report_of[name] = path
        rows += report_rows

    if archs is not None:
        built = collections.defaultdict(set)
        for name, arch, *_ in rows:
            built[name].add(arch)
        for name, have in sorted(built.items()):
            if have != archs:
                failures.append(f"{name} is built for {', '.join(sorted(have))}, expected "
                                f"{', '.join(sorted(archs))}")

    families = collections.defaultdict(list)
    for name, arch, regs, *_ in rows:
        family = "merge" if "merge" in name else "_".join(name.split("_")[-2:])
        families[(arch, family)].append(regs)
    for (arch, family), regs in sorted(families.items()):
        print(f"{arch:8} {family:10} {len(regs):3} kernels, registers {min(regs)}-{max(regs)}")
    bad = [r for r in rows if max(r[3], r[4], r[5]) > SPILL_ALLOWED.get((r[0], r[1]), 0)]
    for name, arch, regs, st, ss, sl in bad:
        failures.append(f"{name} ({arch}): {st} bytes stack frame, {ss}/{sl} bytes spill "
                        "stores/loads")
    for failure in failures:
        print("FAIL " + failure)
    print(f"{len(rows)} kernels in {len(args)} reports, {len(bad)} with stack frame or spills")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
