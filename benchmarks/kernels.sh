#!/usr/bin/env bash
# Build benchmarks/kernels.c against the C core with setup.py's flags and run it.
# Usage: bash benchmarks/kernels.sh [threads] [repeats]   (PYTHON: the venv's python)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
csrc=$(dirname "$here")/csrc
py=${PYTHON:-python3}
lib=$("$py" -c 'import scipy_openblas32 as s; print(s.get_lib_dir())')
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
gcc -std=c11 -O3 -Wall -Wextra -fno-math-errno -fno-trapping-math -fopenmp -I"$csrc" \
    -o "$out/kernels" "$here/kernels.c" "$csrc"/*.c -L"$lib" -lscipy_openblas \
    -Wl,-rpath,"$lib" -lm -fopenmp
"$out/kernels" "$@"
