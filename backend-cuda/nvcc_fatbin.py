#!/usr/bin/env python3
"""Run nvcc with ptxas's resource report on and keep the report.

usage: nvcc_fatbin.py REPORT -- NVCC ARGS...

Adds -Xptxas=-v to the nvcc command, writes ptxas's per-kernel lines (registers, stack frame,
spills, shared memory) to REPORT, passes every other line of output through, and exits with
nvcc's status. check_resources.py reads REPORT in the test suite.
"""
import subprocess
import sys


def main() -> int:
    if len(sys.argv) < 4 or sys.argv[2] != "--":
        print(__doc__, file=sys.stderr)
        return 2
    report, command = sys.argv[1], sys.argv[3:]
    proc = subprocess.run(command + ["-Xptxas=-v"], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
    kept = []
    with open(report, "w", encoding="utf-8") as f:
        for line in proc.stdout.splitlines():
            if line.startswith("ptxas info") or line.lstrip().startswith(
                    ("0 bytes stack", "bytes stack")) or "bytes stack frame" in line:
                f.write(line + "\n")
            else:
                kept.append(line)
    if kept:
        print("\n".join(kept), file=sys.stderr)
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
