#!/usr/bin/env bash
# Installs the Debian 12 packages flashport needs (as root, or through sudo), only those missing.
#   tools/install-deps.sh demo   what building the library and the demo needs
#   tools/install-deps.sh test   that, plus what the test suites need (cmocka, the Khronos
#                                validation layer, SPIR-V tools, g++ for the CUDA kernel emulator,
#                                clang and libFuzzer for the fuzz targets)
# The CUDA backend additionally needs the CUDA toolkit at /usr/local/cuda at build time only;
# without it the backend compiles as a stub that returns FLP_ERROR_UNSUPPORTED.
set -euo pipefail
build_packages=(gcc meson ninja-build pkg-config python3 glslang-tools libvulkan-dev
                libvulkan-volk-dev mesa-vulkan-drivers)
test_packages=(g++ binutils glslang-dev spirv-tools vulkan-validationlayers libcmocka-dev clang
               libclang-rt-14-dev)
case "${1:-test}" in
demo) packages=("${build_packages[@]}") ;;
test) packages=("${build_packages[@]}" "${test_packages[@]}") ;;
*) echo "usage: $0 [demo|test]" >&2; exit 2 ;;
esac
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
