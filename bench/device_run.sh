#!/usr/bin/env bash
# One job on the GPU machine: build with both backends, run the test suites (cuda, and vulkan on
# NVIDIA's driver), compute-sanitizer on the cuda tests, the demo on both backends, and the
# decode benchmark with its torch peer. Run from the repository root with .gl/ (Vulkan loader
# and GL vendor libraries) and .debs/ (Vulkan headers, volk, glslang, cmocka, pkgconf) carried.
# usage: bench/device_run.sh [test|bench|all]   (default all); logs go to $OUT when set.
set -u
mode=${1:-all}
out=${OUT:-/tmp/flp-out}
mkdir -p "$out"
export PYTHONUNBUFFERED=1

for f in .gl/*.deb .debs/*.deb; do dpkg -x "$f" / || exit 1; done
ldconfig
if [ -f /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json ]; then
    export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
    export __EGL_VENDOR_LIBRARY_FILENAMES=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
fi
export FLP_VULKAN_VALIDATION=${FLP_VULKAN_VALIDATION:-0} # no validation layer on this machine
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm --format=csv,noheader

build=build-dev
vulkan=${FLP_DEV_VULKAN:-enabled} # FLP_DEV_VULKAN=disabled: CUDA only
backends="cuda"
[ "$vulkan" = enabled ] && backends="cuda vulkan"
if [ ! -f $build/build.ninja ]; then
    meson setup $build -Dcuda=enabled -Dvulkan=$vulkan -Dbuildtype=release >"$out/setup.log" 2>&1 ||
        { tail -40 "$out/setup.log"; exit 1; }
fi
start=$(date +%s)
ninja -C $build >"$out/build.log" 2>&1 || { grep -E "error|FAILED" -A3 "$out/build.log" | head -60; exit 1; }
echo "build: $(( $(date +%s) - start )) s"

if [ "$mode" != bench ]; then
    meson test -C $build --suite core --suite cuda --suite vulkan --print-errorlogs \
        >"$out/test.log" 2>&1
    grep -E "^ *[0-9]+/[0-9]+ |^Ok:|^Fail:|^Skipped:" "$out/test.log"
    grep -E "FAILED|Assert|error" "$out/test.log" | head -40
    for tool in memcheck racecheck synccheck; do
        echo "== compute-sanitizer --tool $tool on the cuda suites"
        for t in test_decode test_cuda; do
            timeout 150 compute-sanitizer --tool $tool --error-exitcode 9 $build/tests/$t cuda \
                >"$out/sanitizer-$tool-$t.log" 2>&1
            echo "$t: exit $?"; grep -E "ERROR SUMMARY|PASSED|FAILED" "$out/sanitizer-$tool-$t.log" | tail -3
        done
    done
    echo "== demo"
    for be in $backends; do $build/flashport-demo $be 2>&1 | tee "$out/demo-$be.log"; done
fi
if [ "$mode" != test ]; then
    echo "== bench"
    python3 bench/peer_torch_decode.py 64 4096 32 8 128 2>&1 | tee "$out/peer.log"
    copy=$(sed -n 's/^peer copy GB\/s=\([0-9]*\).*/\1/p' "$out/peer.log")
    for be in $backends; do
        $build/bench/flashport-bench-decode --backend $be --batch 64 --kv-len 4096 \
            --copy-gbps "${copy:-0}" 2>&1 | tee -a "$out/bench.log"
    done
fi
