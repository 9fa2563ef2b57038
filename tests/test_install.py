#!/usr/bin/env python3
"""Install flashport into a temporary DESTDIR and use it the way a project that only has
flashport installed would.

usage: test_install.py MESON BUILD_DIR PREFIX LIBDIR VERSION PKG_CONFIG CC [CC ARGS...]

PREFIX and LIBDIR are the install prefix and libdir (absolute), VERSION the project version.
pkg-config sees the DESTDIR copy as if it were installed there (prefix redefined). Checks:
- libflashport.so.VERSION has the SONAME libflashport.so.MAJOR and the .so.MAJOR and .so links;
- the shared library exports flp_* symbols only (nm -D --defined-only);
- flashport.pc requires no other package (PKG_CONFIG_LIBDIR names only the DESTDIR's pkgconfig
  directory, so a vulkan.pc elsewhere cannot be found), and a small C program builds with
  `pkg-config --cflags --libs flashport` (libflashport.so) and, as the README says, with
  libflashport.a plus `pkg-config --static --libs flashport`; both run (no device needed: the
  program calls flp_status_string, flp_f32_to_bf16 and flp_context_create with a bad backend).
Exits 1 with a line saying what is wrong.
"""
import os
import re
import subprocess
import sys
import tempfile

CONSUMER = r"""
#include <flashport/flashport.h>
#include <flashport/flashport_cuda.h>

#include <stdio.h>

int main(void) {
    const char *ok = flp_status_string(FLP_OK);
    if (!ok || !ok[0]) {
        fprintf(stderr, "flp_status_string(FLP_OK) is empty\n");
        return 1;
    }
    if (flp_f32_to_bf16(1.0f) != 0x3f80) {
        fprintf(stderr, "flp_f32_to_bf16(1.0f) = 0x%04x, expected 0x3f80\n", flp_f32_to_bf16(1.0f));
        return 1;
    }
    flp_context_desc desc = {.backend = (flp_backend_kind)99};
    flp_context *ctx = NULL;
    flp_status status = flp_context_create(&desc, &ctx);
    if (status != FLP_ERROR_INVALID_ARGUMENT || ctx) {
        fprintf(stderr, "flp_context_create(backend 99) = %s, expected %s\n",
                flp_status_string(status), flp_status_string(FLP_ERROR_INVALID_ARGUMENT));
        return 1;
    }
    printf("consumer: %s\n", ok);
    return 0;
}
"""


class Failure(Exception):
    pass


def run(command, what, env=None, cwd=None):
    proc = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env=env, cwd=cwd)
    if proc.returncode != 0:
        raise Failure(f"{what} failed (exit {proc.returncode}): {' '.join(command)}\n"
                      f"{proc.stdout}")
    return proc.stdout


def check_shared_library(libdir, version):
    major = version.split(".")[0]
    real = os.path.join(libdir, f"libflashport.so.{version}")
    soname = f"libflashport.so.{major}"
    if not os.path.isfile(real) or os.path.islink(real):
        raise Failure(f"{real} is not installed as a file")
    for link in (soname, "libflashport.so"):
        path = os.path.join(libdir, link)
        if not os.path.islink(path) or os.path.realpath(path) != os.path.realpath(real):
            raise Failure(f"{path} is not a link to {os.path.basename(real)}")
    dynamic = run(["readelf", "-d", real], "readelf -d")
    m = re.search(r"Library soname: \[([^\]]+)\]", dynamic)
    if not m or m.group(1) != soname:
        raise Failure(f"SONAME of {real} is {m.group(1) if m else 'missing'}, expected {soname}")
    print(f"ok: {os.path.basename(real)}, SONAME {soname}")

    exported = run(["nm", "-D", "--defined-only", real], "nm -D").splitlines()
    names = [line.split()[-1] for line in exported if line.strip()]
    leaked = sorted(n for n in names if not n.startswith("flp_"))
    if leaked:
        raise Failure(f"{real} exports {len(leaked)} symbols that are not flp_*: "
                      + ", ".join(leaked[:20]) + (" ..." if len(leaked) > 20 else ""))
    if not names:
        raise Failure(f"{real} exports no symbol")
    print(f"ok: {len(names)} exported symbols, all flp_*")


def check_pc_requires_nothing(libdir):
    pc = os.path.join(libdir, "pkgconfig", "flashport.pc")
    if not os.path.isfile(pc):
        raise Failure(f"{pc} is not installed")
    for line in open(pc, encoding="utf-8"):
        if re.match(r"Requires(\.private)?\s*:\s*\S", line):
            raise Failure(f"{pc}: '{line.strip()}': the library loads Vulkan and CUDA at run "
                          "time, it may require no other package")
    print("ok: flashport.pc requires no other package")


def check_consumers(pkg_config, libdir, cc, work):
    # Only the installed flashport.pc can be found.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PKG_CONFIG_")}
    env["PKG_CONFIG_LIBDIR"] = os.path.join(libdir, "pkgconfig")

    def flags(*options):
        return run(pkg_config + [*options, "flashport"], "pkg-config " + " ".join(options),
                   env=env).split()

    source = os.path.join(work, "consumer.c")
    with open(source, "w", encoding="utf-8") as f:
        f.write(CONSUMER)
    warnings = ["-std=c11", "-Wall", "-Wextra", "-Werror"]
    clean_env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}

    shared = os.path.join(work, "consumer_shared")
    run(cc + warnings + [source, "-o", shared] + flags("--cflags", "--libs"),
        "building against libflashport.so with pkg-config --cflags --libs")
    needed = run(["readelf", "-d", shared], "readelf -d")
    if "libflashport.so." not in needed:
        raise Failure(f"{shared} does not link libflashport.so")
    run([shared], "the shared consumer", env=dict(clean_env, LD_LIBRARY_PATH=libdir))
    print("ok: shared consumer built with pkg-config and ran")

    # README: the archive, then pkg-config --static for what it needs from the system;
    # --as-needed drops the -lflashport (the .so) those flags also name.
    static = os.path.join(work, "consumer_static")
    archive = os.path.join(flags("--variable=libdir")[0], "libflashport.a")
    run(cc + warnings + [source, "-o", static] + flags("--cflags") + ["-Wl,--as-needed", archive] +
        flags("--static", "--libs"),
        "building with libflashport.a and pkg-config --static --libs (missing Libs.private?)")
    needed = run(["readelf", "-d", static], "readelf -d")
    if "libflashport" in needed:
        raise Failure(f"{static} needs libflashport.so at run time, expected a static link")
    run([static], "the static consumer", env=clean_env)
    print("ok: static consumer built with libflashport.a + pkg-config --static and ran")

    # The consumer pulls in only some members of the archive: link all of them to check that
    # Libs.private covers everything the library calls.
    run(cc + [source, "-o", static + "_whole"] + flags("--cflags") +
        ["-Wl,--as-needed", "-Wl,--whole-archive", archive, "-Wl,--no-whole-archive"] +
        flags("--static", "--libs"),
        "linking every member of libflashport.a with pkg-config --static --libs (a library "
        "missing from Libs.private?)")
    print("ok: every member of libflashport.a links with pkg-config --static --libs")


def main() -> int:
    if len(sys.argv) < 8:
        print(__doc__, file=sys.stderr)
        return 2
    meson, build_dir, prefix, libdir, version, pkg_config = sys.argv[1:7]
    cc = sys.argv[7:]
    with tempfile.TemporaryDirectory(prefix="flashport-install-") as work:
        root = os.path.join(work, "root")
        try:
            run([meson, "install", "-C", build_dir, "--destdir", root, "--no-rebuild"],
                "meson install")
            installed_libdir = root + libdir
            check_shared_library(installed_libdir, version)
            check_pc_requires_nothing(installed_libdir)
            relocated = [pkg_config, f"--define-variable=prefix={root}{prefix}"]
            check_consumers(relocated, installed_libdir, cc, work)
        except Failure as e:
            print(f"FAIL: {e}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
