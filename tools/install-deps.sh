#!/usr/bin/env bash
# Installs the Debian 12 packages flashport needs to build and test (as root, or through sudo).
# The CUDA backend additionally needs the CUDA toolkit at /usr/local/cuda at build time only;
# without it the backend compiles as a stub that returns FLP_ERROR_UNSUPPORTED.
set -euo pipefail
packages=(gcc g++ meson ninja-build pkg-config python3 glslang-tools glslang-dev spirv-tools
          libvulkan-dev libvulkan-volk-dev mesa-vulkan-drivers vulkan-validationlayers
          libcmocka-dev)
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
