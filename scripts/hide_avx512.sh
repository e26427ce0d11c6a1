#!/usr/bin/env bash
# Runs a command as on a CPU without AVX-512, to measure the AVX2 paths of adcorre and its peers
# on an AVX-512 machine: every CPUID the command executes reports no AVX-512 (hide_avx512.c,
# through Linux's CPUID faulting), so the gemm crate, adcorre's own loops, ONNX Runtime and
# TensorFlow all choose their AVX2 kernels; glibc's own string functions are capped by its
# tunables. On Zen 4, whose AVX-512 runs at the AVX2 FMA rate, this is close to an AVX2-only
# machine of the same core. Needs gcc and a CPU whose /proc/cpuinfo lists cpuid_fault. A program
# that installs its own SIGSEGV handler and then executes CPUID is not covered (it would crash);
# Python, ONNX Runtime, TensorFlow, Rust binaries and cargo test have run under it.
# Usage: scripts/hide_avx512.sh COMMAND [ARGS...]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
lib=$root/target/peers/hide_avx512.so
src=$root/scripts/hide_avx512.c
if ! grep -qw cpuid_fault /proc/cpuinfo; then
    echo "hide_avx512: this CPU or kernel has no CPUID faulting (no cpuid_fault in /proc/cpuinfo)" >&2
    exit 2
fi
if [ ! -s "$lib" ] || [ "$src" -nt "$lib" ]; then
    mkdir -p "$(dirname "$lib")"
    gcc -O2 -Wall -shared -fPIC -o "$lib" "$src"
fi
export LD_PRELOAD="$lib${LD_PRELOAD:+:$LD_PRELOAD}"
export GLIBC_TUNABLES="glibc.cpu.hwcaps=-AVX512F,-AVX512VL,-AVX512BW,-AVX512DQ,-AVX512CD${GLIBC_TUNABLES:+:$GLIBC_TUNABLES}"
exec "$@"
