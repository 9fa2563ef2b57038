#!/usr/bin/env python3
"""Inline the quoted includes of a CUDA source into one self-contained text for NVRTC.

usage: inline_includes.py OUT DEPFILE ROOT INPUT

`#include "path"` lines are replaced by the file's text (searched next to the including file,
then under ROOT), each file at most once (all our headers have include guards), with `#line`
markers so that NVRTC's log names the original files and lines. Angle-bracket includes are
kept as they are (they only appear in branches NVRTC never takes). DEPFILE lists the inputs
for ninja.
"""
import os
import re
import sys

INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"')


def main() -> int:
    if len(sys.argv) != 5:
        print(__doc__, file=sys.stderr)
        return 2
    out_path, dep_path, root, src = sys.argv[1:]
    root = os.path.abspath(root)
    seen = []
    lines = []

    def name_of(path):
        rel = os.path.relpath(path, root)
        return rel if not rel.startswith("..") else path

    def emit(path):
        path = os.path.abspath(path)
        if path in seen:
            return
        seen.append(path)
        lines.append(f'#line 1 "{name_of(path)}"\n')
        with open(path, encoding="utf-8") as f:
            text = f.readlines()
        for number, line in enumerate(text, start=1):
            m = INCLUDE.match(line)
            if not m:
                lines.append(line if line.endswith("\n") else line + "\n")
                continue
            target = None
            for base in (os.path.dirname(path), root):
                candidate = os.path.join(base, m.group(1))
                if os.path.isfile(candidate):
                    target = candidate
                    break
            if target is None:
                print(f"{path}:{number}: cannot find include \"{m.group(1)}\"", file=sys.stderr)
                sys.exit(1)
            emit(target)
            lines.append(f'#line {number + 1} "{name_of(path)}"\n')

    emit(src)
    with open(out_path, "w", encoding="utf-8") as f:
        f.writelines(lines)
    with open(dep_path, "w", encoding="utf-8") as f:
        deps = " ".join(p.replace(" ", "\\ ") for p in seen)
        f.write(f"{out_path}: {deps}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
