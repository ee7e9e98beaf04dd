#!/usr/bin/env bash
# Builds the C and C++ examples into OUTDIR, one directory per variant:
#
#   gcc/    worker, libplugin.so, libplugin2.so, libnest.so (whose constructor
#           loads libplugin2.so), libspin.so (whose constructor starts a
#           thread calling its functions): gcc -fpatchable-function-entry=5
#           (five one-byte NOPs per function, converted by livetrace at load)
#   clang/  the same with clang (one 5-byte NOP per function), if installed
#   mcount/ worker built -pg -mfentry -mnop-mcount -mrecord-mcount, non-PIE
#           (sites listed in __mcount_loc); its plugins as in gcc/
#   plain/  no instrumentation at all: the benchmark's baseline
#   cxx/    shapes (C++): g++ -fpatchable-function-entry=5
#
# Usage: build.sh OUTDIR [VARIANT...]   (default: gcc mcount plain cxx, and
#        clang when installed). Environment: CC (gcc), CLANG (clang),
#        CXX (g++), OPT (-O2).
# The programs need no livetrace at build time: they declare the API weak
# and find it in liblivetrace.so when it is preloaded (LD_PRELOAD).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
include="$here/../../crates/preload/include"
out=${1:?usage: build.sh OUTDIR [gcc|clang|mcount|plain|cxx ...]}
shift
CC=${CC:-gcc}
CLANG=${CLANG:-clang}
CXX=${CXX:-g++}
OPT=${OPT:--O2}

variants=("$@")
if [ ${#variants[@]} -eq 0 ]; then
    variants=(gcc mcount plain cxx)
    if command -v "$CLANG" >/dev/null 2>&1; then variants+=(clang); fi
fi

patch=(-fpatchable-function-entry=5)
# RUNPATH $ORIGIN: the worker dlopens its plugins by bare name.
exe_link=(-pthread -ldl -Wl,--enable-new-dtags -Wl,-rpath,'$ORIGIN')

plugins() { # compiler dir flags...
    local cc=$1 dir=$2
    shift 2
    "$cc" $OPT -g -fPIC -shared "$@" "$here/plugin.c" -o "$dir/libplugin.so"
    "$cc" $OPT -g -fPIC -shared "$@" "$here/plugin.c" -o "$dir/libplugin2.so"
    # libnest.so loads libplugin2.so from its constructor.
    "$cc" $OPT -g -fPIC -shared -DPLUGIN_NEST "$@" "$here/plugin.c" -o "$dir/libnest.so" \
        -ldl -Wl,--enable-new-dtags -Wl,-rpath,'$ORIGIN'
    # libspin.so starts a thread running its own functions from its
    # constructor.
    "$cc" $OPT -g -fPIC -shared -DPLUGIN_SPIN "$@" "$here/plugin.c" -o "$dir/libspin.so" -pthread
}

for v in "${variants[@]}"; do
    dir="$out/$v"
    mkdir -p "$dir"
    case $v in
    gcc)
        plugins "$CC" "$dir" "${patch[@]}"
        "$CC" $OPT -g -I"$include" "${patch[@]}" "$here/worker.c" -o "$dir/worker" "${exe_link[@]}"
        ;;
    clang)
        plugins "$CLANG" "$dir" "${patch[@]}"
        "$CLANG" $OPT -g -I"$include" "${patch[@]}" "$here/worker.c" -o "$dir/worker" "${exe_link[@]}"
        ;;
    mcount)
        # gcc records 5-byte-NOP mcount sites only in non-PIC code. Compiled
        # with -pg but linked without it: no gcrt1.o, no gmon.out.
        plugins "$CC" "$dir" "${patch[@]}"
        "$CC" $OPT -g -I"$include" -fno-pie -pg -mfentry -mnop-mcount -mrecord-mcount \
            -c "$here/worker.c" -o "$dir/worker.o"
        # dynamic-undefined-weak: the weak lt_* references stay dynamic
        # symbols, resolved from liblivetrace.so when it is preloaded.
        "$CC" -no-pie "$dir/worker.o" -o "$dir/worker" "${exe_link[@]}" -Wl,-z,dynamic-undefined-weak
        rm -f "$dir/worker.o"
        ;;
    plain)
        plugins "$CC" "$dir"
        "$CC" $OPT -g -I"$include" "$here/worker.c" -o "$dir/worker" "${exe_link[@]}"
        ;;
    cxx)
        "$CXX" $OPT -g -I"$include" "${patch[@]}" "$here/shapes.cc" -o "$dir/shapes"
        ;;
    *)
        echo "build.sh: unknown variant $v" >&2
        exit 2
        ;;
    esac
    echo "built $dir"
done
