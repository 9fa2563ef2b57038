#!/usr/bin/env bash
# tools/meson_configure.sh DIR OPTIONS...: `meson setup DIR OPTIONS` for a new DIR; a DIR that
# exists (configured earlier, maybe by another command with other options) is reconfigured with
# OPTIONS, so every build directory has exactly the options its command states. Run from the
# repository root.
set -euo pipefail
dir=$1
shift
if [ -f "$dir/meson-private/coredata.dat" ]; then
    meson setup --reconfigure "$dir" "$@"
else
    meson setup "$dir" "$@"
fi
