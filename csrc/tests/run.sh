#!/usr/bin/env bash
# Build every csrc/tests/test_*.c against the whole C core with AddressSanitizer and
# UndefinedBehaviorSanitizer, run each, and fail if any build or run fails.
# Usage: csrc/tests/run.sh [test_name ...]   (default: all)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
csrc=$(dirname "$here")
out="$here/bin"
mkdir -p "$out"
py=${PYTHON:-python3}
lib=$("$py" -c 'import scipy_openblas32 as s; print(s.get_lib_dir())')
cflags=(-std=c11 -O1 -g -Wall -Wextra -Werror -fno-omit-frame-pointer -fno-trapping-math
        -fsanitize=address,undefined -fno-sanitize-recover=all -fopenmp -I"$csrc")
ldflags=(-L"$lib" -lscipy_openblas -Wl,-rpath,"$lib" -lm -fopenmp)
tests=("$@")
if [ ${#tests[@]} -eq 0 ]; then
  for f in "$here"/test_*.c; do tests+=("$(basename "$f" .c)"); done
fi
# The core is compiled once (in parallel) and every test links the same objects: compiling
# all of csrc again for each test was most of this script's time.
objs="$out/obj"
rm -rf "$objs"; mkdir -p "$objs"
jobs=$(nproc 2>/dev/null || echo 2)
if ! printf '%s\n' "$csrc"/*.c | xargs -P "$jobs" -I{} sh -c \
    'gcc "$@" -c -o "'"$objs"'/$(basename "{}" .c).o" "{}"' _ "${cflags[@]}"; then
  echo "BUILD FAILED: the C core"; exit 1
fi
failed=0; passed=0
for t in "${tests[@]}"; do
  if ! gcc "${cflags[@]}" -o "$out/$t" "$here/$t.c" "$objs"/*.o "${ldflags[@]}"; then
    echo "BUILD FAILED: $t"; failed=$((failed + 1)); continue
  fi
  if ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 "$out/$t"; then
    passed=$((passed + 1))
  else
    echo "FAILED: $t"; failed=$((failed + 1))
  fi
done
echo "C tests: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
