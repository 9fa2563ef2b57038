#!/usr/bin/env bash
# Builds what the demo runs and nothing else (the library for the hardware present and
# flashport-demo; no tests, benchmarks or emulator) in its own build directory, then runs it on
# the best backend present (CUDA, else a Vulkan GPU, else lavapipe).
# CUDA kernels are compiled only when an NVIDIA driver and the toolkit are present, and then only
# for the GPUs of this machine (the fatbin of all default architectures takes minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
tools/install-deps.sh demo

build="build-demo"
toolkit=/usr/local/cuda

# nvcc architecture of each GPU nvidia-smi lists ("9.0" -> 90a as in the default -Dnvcc_archs,
# "8.6" -> 86), comma-separated; empty when there is none or nvidia-smi is missing.
gpu_archs() {
    command -v nvidia-smi >/dev/null || return 0
    { nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null || true; } |
        awk -F. '/^[0-9]+\.[0-9]+$/ { a = $1 $2; if (a == "90") a = "90a"; print a }' |
        sort -u | paste -sd, -
}

cuda_options=(-Dcuda=disabled)
if [ -x "$toolkit/bin/nvcc" ]; then
    archs=$(gpu_archs)
    if [ -n "$archs" ]; then
        # An architecture this nvcc does not know: build the defaults, NVRTC covers the GPU.
        known=$("$toolkit/bin/nvcc" --list-gpu-code | tr '\n' ' ')
        arch_option=(-Dnvcc_archs="$archs")
        for a in ${archs//,/ }; do
            [[ " $known " == *" sm_${a%[af]} "* ]] || arch_option=()
        done
        cuda_options=(-Dcuda=enabled -Dcudatoolkit="$toolkit" "${arch_option[@]}")
    elif [ -e /proc/driver/nvidia/version ]; then
        # A driver without nvidia-smi: the GPU is unknown, build the default architectures.
        cuda_options=(-Dcuda=enabled -Dcudatoolkit="$toolkit")
    fi
fi

options=(-Dtests=false -Dbench=false -Dvulkan=auto "${cuda_options[@]}")
tools/meson_configure.sh "$build" "${options[@]}"
ninja -C "$build" flashport-demo
"$build/flashport-demo"
