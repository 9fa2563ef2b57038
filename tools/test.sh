#!/usr/bin/env bash
# Builds flashport (warnings are errors) and runs every test suite: core (with the install
# check: pkg-config, SONAME, exported symbols) and vulkan (lavapipe or a GPU, Khronos validation
# layer on: any validation message fails), cuda (skipped, exit 77, without an NVIDIA GPU; the
# NVRTC compile test, the resource check and the emulated kernels still run), then the core suite
# again under ASan+UBSan, the libFuzzer targets for a bounded time, then a clang-format check.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/install-deps.sh test

cuda=disabled
[ -x /usr/local/cuda/bin/nvcc ] && cuda=enabled
tools/meson_configure.sh build -Dvulkan=enabled -Dcuda=$cuda -Dnvcc_archs=80,90a -Dtests=true \
    -Dbench=true -Dfuzz=false -Dwerror=true
ninja -C build
log=$(mktemp)
meson test -C build --suite core --suite vulkan --suite cuda --print-errorlogs | tee "$log"

tools/meson_configure.sh build-asan -Db_sanitize=address,undefined -Db_lundef=false \
    -Dvulkan=disabled -Dcuda=disabled -Dtests=true -Dbench=false -Dfuzz=false -Dwerror=true
# Only the core suite's programs: the other targets (the CUDA kernel emulator above all) take
# minutes to compile under the sanitizers and are not run here.
core_programs=$(meson introspect build-asan --tests | python3 -c '
import json, os, sys
tests = json.load(sys.stdin)
build = os.path.abspath("build-asan")
print(" ".join(sorted({os.path.relpath(t["cmd"][0], build) for t in tests
                       if any(s.split(":")[-1] == "core" for s in t["suite"])
                       and t["cmd"][0].startswith(build + os.sep)})))')
ninja -C build-asan $core_programs
UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 meson test -C build-asan --suite core \
    --no-rebuild --print-errorlogs | tee -a "$log"

# The libFuzzer targets, each for a bounded time (FLP_FUZZ_SECONDS, default 20) on its corpus.
# FLP_FUZZ_SECONDS=0 leaves them out, saying so (a machine without clang; the corpus replays
# above still ran).
if [ "${FLP_FUZZ_SECONDS:-20}" = 0 ]; then
    echo "fuzz: not run (FLP_FUZZ_SECONDS=0)"
else
    tests/fuzz/run.sh "${FLP_FUZZ_SECONDS:-20}"
fi

if command -v clang-format >/dev/null; then
    git ls-files '*.c' '*.h' '*.cu' '*.cuh' | xargs clang-format --dry-run -Werror
    echo "clang-format: clean"
fi

# One closing line over both runs (meson prints "Ok: N", "Fail: N", "Skipped: N" per run).
count() { awk -v k="$1:" '$1 == k { n += $2 } END { print n + 0 }' "$log"; }
echo "tests: $(count Ok) passed, $(count Fail) failed, $(count Skipped) skipped"
rm -f "$log"
