#!/usr/bin/env bash
# Builds flashport and runs the demo on the best backend present (CUDA, else a Vulkan GPU, else
# lavapipe).
set -euo pipefail
cd "$(dirname "$0")/.."
tools/install-deps.sh
[ -f build/build.ninja ] || meson setup build
ninja -C build
build/flashport-demo
