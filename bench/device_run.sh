#!/usr/bin/env bash
# Jobs on the GPU machine (16 cores, one H100/H200, no package manager), run from the repository
# root with .gl/ (Vulkan loader and GL vendor libraries) and .debs/ (Vulkan headers, volk,
# glslang, cmocka, pkgconf) carried.
#   bench/device_run.sh check   the README's two commands, timed (tools/demo.sh in build-demo,
#                               tools/test.sh in build/ and build-asan/: every suite, the cuda
#                               ones on the GPU and vulkan on NVIDIA's driver), then
#                               compute-sanitizer memcheck on the cuda suites (FLP_SANITIZERS
#                               names other tools, e.g. "racecheck synccheck")
#   bench/device_run.sh bench   racecheck and synccheck on the cuda suites, the demo on both
#                               backends, the decode and prefill benchmarks with their torch peers
#                               (uses build/ from `check` on the same warm machine, else builds it)
#   bench/device_run.sh decode|prefill   that benchmark only (decode: with FlashInfer's decode
#                               paths as peers when .whl/ and .peers/ are carried)
# Logs go to $OUT when set. FLP_DECODE_CASES overrides the decode cases (flashport-bench-decode
# arguments, cases separated by ';'; default: uniform 16 x 1024, 64 x 4096, 256 x 16384, three
# skewed batches, fp8 caches, GQA group 8 on both decode kernels). FLP_PREFILL_CASES overrides
# the prefill cases (bench/bench_prefill.c names them; default: the single prompts 1k-16k, the
# ragged batch and the speculative shape).
set -u
mode=${1:-check}
run_check=0 run_sanitize=0 run_decode=0 run_prefill=0
case "$mode" in
check) run_check=1 ;;
bench) run_sanitize=1 run_decode=1 run_prefill=1 ;;
decode) run_decode=1 ;;
prefill) run_prefill=1 ;;
*) echo "usage: $0 [check|bench|decode|prefill]" >&2; exit 2 ;;
esac
out=${OUT:-/tmp/flp-out}
mkdir -p "$out"
export PYTHONUNBUFFERED=1

for f in .gl/*.deb .debs/*.deb; do dpkg -x "$f" / || exit 1; done
ldconfig
if [ -f /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json ]; then
    export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
    export __EGL_VENDOR_LIBRARY_FILENAMES=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
fi
export FLP_VULKAN_VALIDATION=0 # no validation layer on this machine
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm --format=csv,noheader
nproc

# The packages were unpacked above, not installed: tell tools/install-deps.sh they are there.
mkdir -p /tmp/flp-shim
printf '#!/bin/sh\nprintf "install ok installed"\n' >/tmp/flp-shim/dpkg-query
chmod +x /tmp/flp-shim/dpkg-query
export PATH=/tmp/flp-shim:$PATH

build=build
if [ $run_check = 1 ]; then
    rm -rf build build-asan build-demo
    start=$(date +%s)
    tools/demo.sh >"$out/demo-sh.log" 2>&1
    echo "tools/demo.sh: exit $?, $(( $(date +%s) - start )) s"
    tail -4 "$out/demo-sh.log"
    start=$(date +%s)
    # no clang here: the fuzz targets are left out (their corpus replays run in the core suite)
    FLP_FUZZ_SECONDS=0 tools/test.sh >"$out/test-sh.log" 2>&1
    echo "tools/test.sh: exit $?, $(( $(date +%s) - start )) s"
    grep -E "^ *[0-9]+/[0-9]+ |^Ok:|^Fail:|^Skipped:|^tests:|^fuzz:" "$out/test-sh.log"
    grep -E "FAILED|Assert|error:" "$out/test-sh.log" | head -30
    read -r -a tools <<<"${FLP_SANITIZERS:-memcheck}"
elif [ ! -f $build/build.ninja ]; then
    tools/meson_configure.sh $build -Dcuda=enabled -Dvulkan=enabled -Dbuildtype=release \
        >"$out/setup.log" 2>&1 || { tail -40 "$out/setup.log"; exit 1; }
    ninja -C $build >"$out/build.log" 2>&1 || { grep -E "error|FAILED" -A3 "$out/build.log" | head -60; exit 1; }
fi
[ $run_sanitize = 1 ] && tools=(racecheck synccheck)
if [ $run_check = 1 ] || [ $run_sanitize = 1 ]; then
    for tool in "${tools[@]}"; do
        echo "== compute-sanitizer --tool $tool on the cuda suites"
        for t in test_cuda test_decode test_prefill; do
            timeout 170 compute-sanitizer --tool $tool --error-exitcode 9 $build/tests/$t cuda \
                >"$out/sanitizer-$tool-$t.log" 2>&1
            echo "$t: exit $?"; grep -E "ERROR SUMMARY|PASSED|FAILED" "$out/sanitizer-$tool-$t.log" | tail -3
        done
    done
fi
if [ $run_sanitize = 1 ]; then
    echo "== demo"
    for be in cuda vulkan; do $build/flashport-demo $be 2>&1 | tee "$out/demo-$be.log"; done
fi
copy=""
if [ $run_decode = 1 ]; then
    # Uniform batches (torch SDPA over a contiguous cache of the same size as the peer), skewed
    # serving batches, fp8 caches. FLP_DECODE_CASES overrides the list (flashport-bench-decode
    # arguments per case, cases separated by ';').
    echo "== bench"
    for shape in "16 1024" "64 4096" "256 16384"; do
        python3 bench/peer_torch_decode.py $shape 32 8 128 2>&1 | grep -v Warning |
            grep -v "fn = lambda" | tee -a "$out/peer.log"
    done
    copy=$(sed -n 's/^peer copy GB\/s=\([0-9]*\).*/\1/p' "$out/peer.log" | head -1)
    cases=${FLP_DECODE_CASES:-"--batch 16 --kv-len 1024;--batch 64 --kv-len 4096;\
--batch 256 --kv-len 16384;--lens 32768x1,512x63;--lens 65536x2,256x254;--lens 131072x1,1024x7;\
--batch 64 --kv-len 4096 --kv-dtype e4m3;--batch 64 --kv-len 4096 --kv-dtype e5m2;\
--batch 256 --kv-len 16384 --kv-dtype e4m3;--batch 64 --kv-len 4096 --qo-heads 64;\
--batch 64 --kv-len 4096 --qo-heads 64 --decode-kernel vector"}
    for be in cuda vulkan; do
        IFS=';' read -r -a list <<<"$cases"
        for args in "${list[@]}"; do
            # shellcheck disable=SC2086
            timeout 120 $build/bench/flashport-bench-decode --backend $be $args \
                --copy-gbps "${copy:-0}" 2>&1 | tee -a "$out/bench.log"
        done
    done
fi
if [ $run_decode = 1 ] && [ -d .whl ] && [ -f .peers/flashinfer_bench.py ]; then
    # FlashInfer 0.3.1 (wheel built and script copied as ../shared/peers/README says, carried as
    # .whl/ and .peers/): its decode paths, the skewed batch and fp8, and SDPA, on this GPU.
    echo "== FlashInfer peer"
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
    PYTHONPATH=/tmp/site FLASHINFER_WORKSPACE_BASE=/tmp/fi MAX_JOBS=16 TORCH_CUDA_ARCH_LIST=9.0a \
        FLASHINFER_CUDA_ARCH_LIST=9.0a timeout 300 python3 .peers/flashinfer_bench.py --phase bench \
        --sections skewed,fp8,decode --out "$out/flashinfer.json" >"$out/flashinfer.log" 2>&1
    echo "flashinfer_bench.py: exit $?"
    grep -E "^(decode|skewed|fp8) " "$out/flashinfer.log"
fi
if [ $run_prefill = 1 ]; then
    # Peer first (its lines give the C bench its vs_cudnn / vs_flash ratios). Each case times
    # for about --budget-ms; Vulkan runs of the 16k prompt may take ~0.1-1 s or more each, so
    # Vulkan gets at most 10 runs per batch. timeout bounds a stuck run.
    echo "== prefill bench"
    cases=${FLP_PREFILL_CASES:-default}
    copy_arg=""
    [ -z "$copy" ] && copy_arg="--copy"
    timeout 300 python3 bench/peer_torch_prefill.py --cases "$cases" --budget-ms 300 --gemm \
        $copy_arg 2>&1 | tee "$out/peer_prefill.log"
    echo "peer_torch_prefill.py: exit ${PIPESTATUS[0]}"
    [ -z "$copy" ] && copy=$(sed -n 's/^peer copy GB\/s=\([0-9]*\).*/\1/p' "$out/peer_prefill.log")
    for be in cuda vulkan; do
        limits="--budget-ms 300 --max-iters 100" be_cases=$cases
        if [ "$be" = vulkan ]; then
            limits="--budget-ms 600 --max-iters 10"
            # the slowest (longest) prompts last, so a timeout loses the fewest cases
            [ "$cases" = default ] && be_cases="single:1024,single:4096,ragged:16:256:4096,\
spec:64:4:4096,specdec:64:4:4096,spec:64:512:4608,single:8192,single:8192:paged,single:16384"
        fi
        timeout 300 $build/bench/flashport-bench-prefill --backend $be --cases "$be_cases" $limits \
            --peer "$out/peer_prefill.log" --copy-gbps "${copy:-0}" 2>&1 |
            tee "$out/bench_prefill-$be.log"
        echo "flashport-bench-prefill $be: exit ${PIPESTATUS[0]}"
    done
fi
