#!/bin/sh
# Builds the libFuzzer targets of tests/fuzz with clang (ASan + UBSan, the library instrumented
# for coverage) in their own build directory and runs each for a bounded time on its corpus.
# Fails on the first crash, failed check, leak or timeout; libFuzzer saves the input under
# <build>/fuzz-artifacts/ and prints how to replay it.
#
#   tests/fuzz/run.sh [seconds per target (default 60)] [target ...]
#
# Targets: page_table, tensor_check, decode_plan, prefill_plan, snippet (default: all). FLP_FUZZ_BUILD
# names the build directory (default build-fuzz). New inputs found go to a temporary directory:
# the checked-in corpus only changes by hand (e.g. fuzz_<target> -merge=1
# tests/fuzz/corpus/<target> <new inputs>).
# Needs clang and libFuzzer (Debian: clang, libclang-rt-14-dev).
set -eu
root=$(cd "$(dirname "$0")/../.." && pwd)
seconds=${1:-60}
[ $# -gt 0 ] && shift
targets=${*:-page_table tensor_check decode_plan prefill_plan snippet}
build=${FLP_FUZZ_BUILD:-$root/build-fuzz}

if [ ! -f "$build/build.ninja" ]; then
    # Only the core is needed: no GPU backend. -fsanitize=fuzzer-no-link gives libFuzzer the
    # library's coverage; UBSan findings abort instead of printing and going on.
    CC=clang meson setup "$build" "$root" -Dfuzz=true -Dvulkan=disabled -Dcuda=disabled \
        -Dbench=false -Db_sanitize=address,undefined -Db_lundef=false \
        -Dc_args='-fsanitize=fuzzer-no-link -fno-sanitize-recover=all'
fi
ninja -C "$build" $(for t in $targets; do printf 'tests/fuzz/fuzz_%s ' "$t"; done)

mkdir -p "$build/fuzz-artifacts"
for t in $targets; do
    found=$(mktemp -d)
    echo "== fuzz_$t: $seconds s on tests/fuzz/corpus/$t"
    if ! "$build/tests/fuzz/fuzz_$t" -max_total_time="$seconds" -timeout=20 -rss_limit_mb=2048 \
        -print_final_stats=1 -artifact_prefix="$build/fuzz-artifacts/$t-" \
        "$found" "$root/tests/fuzz/corpus/$t"; then
        rm -rf "$found"
        echo "fuzz_$t FAILED: see $build/fuzz-artifacts/ (replay: $build/tests/fuzz/fuzz_$t <file>)"
        exit 1
    fi
    echo "fuzz_$t: $(ls "$found" | wc -l) new input(s) this run (not kept)"
    rm -rf "$found"
done
echo "all fuzz targets ran clean"
