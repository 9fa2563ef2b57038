#!/usr/bin/env python3
"""Inline the quoted includes of a source into one self-contained text: a CUDA source for
NVRTC, or (--glsl) a GLSL shader for the Vulkan backend's run-time compiles.

usage: inline_includes.py [--glsl] OUT DEPFILE ROOT INPUT

`#include "path"` lines are replaced by the file's text (searched next to the including file,
then under ROOT), each file at most once (all our headers have include guards), with `#line`
markers so that the compiler's log names the original files and lines. Angle-bracket includes
are kept as they are (they only appear in branches NVRTC never takes). With --glsl the input's
own first `#line` is left out (`#version` must come first in GLSL; the markers of included files
follow the shader's #extension GL_GOOGLE_include_directive, which allows file names in them).
DEPFILE lists the inputs for ninja.
"""
import os
import re
import sys

INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"')


def main() -> int:
    args = sys.argv[1:]
    glsl = bool(args) and args[0] == "--glsl"
    if glsl:
        args = args[1:]
    if len(args) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    out_path, dep_path, root, src = args
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
        if not (glsl and path == os.path.abspath(src)):
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
