#!/usr/bin/env bash
# Build the libFuzzer harness for the C engine and run it for SECONDS.
#
#   tests/fuzz/run.sh SECONDS [libFuzzer options...]
#
# Environment:
#   FUZZ_WORK   where the binary, the corpus and findings go
#               (default: build/fuzz in the repository; kept between runs)
#   PYTHON      python with scapy, for the seed corpus (default: the dev venv)
#   CC          clang 14 or newer with libFuzzer (default: clang)
#   FUZZ_HISTORY  where each engine's inputs are kept, to replay a finding
#               that needed earlier inputs (default: $FUZZ_WORK/history)
#   FUZZ_RECYCLE, FUZZ_FRESH, FUZZ_REPLAY: see the top of fuzz_engine.c
#   FUZZ_TARGET engine (default: fuzz_engine.c, the whole engine) or policy
#               (fuzz_policy.c: the egress policy's compiled matcher against
#               a reference matcher; no seeds, no sockets)
#
# Reproduce a finding: "$FUZZ_WORK/fuzz_engine" FILE (with FUZZ_FRESH=1 if it
# came from one input alone), or FUZZ_REPLAY=1 "$FUZZ_WORK/fuzz_engine"
# "$FUZZ_WORK/history/history-XX" (XX: the finding's first byte, in hex).
#
# Exit status: 0 when the run ended with no finding; non-zero on a crash,
# leak, sanitizer report or timeout (the reproducer is in $FUZZ_WORK/findings).
# The harness runs in its own empty network namespace and can only connect()
# to loopback: see the comment at the top of fuzz_engine.c.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
secs=${1:?usage: run.sh SECONDS [libFuzzer options...]}
shift
work=${FUZZ_WORK:-$root/build/fuzz}
python=${PYTHON:-/opt/slirpy-venv/bin/python}
cc=${CC:-clang}
mkdir -p "$work/corpus" "$work/findings" "$work/seeds"
export FUZZ_HISTORY=${FUZZ_HISTORY:-$work/history}
mkdir -p "$FUZZ_HISTORY"

target=${FUZZ_TARGET:-engine}
case $target in
    engine) extra=(-DSL_MAX_LISTENERS=8 -Wl,--wrap=connect) ;;
    policy) extra=() ;;
    *) echo "run.sh: FUZZ_TARGET must be engine or policy" >&2; exit 2 ;;
esac
bin=$work/fuzz_$target
srcs=("$root"/csrc/*.c "$here/fuzz_$target.c")
if [ ! -x "$bin" ] || [ -n "$(find "${srcs[@]}" "$root"/csrc/*.h -newer "$bin" 2>/dev/null)" ]; then
    "$cc" -g -O1 -std=gnu11 -Wall -Wextra -Werror \
        -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
        -fno-omit-frame-pointer -I"$root/csrc" "${extra[@]}" \
        "${srcs[@]}" -o "$bin.tmp"
    mv "$bin.tmp" "$bin"
fi

if [ "$target" = policy ]; then
    mkdir -p "$work/corpus-policy"
    exec "$bin" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -max_len=4096 \
        -print_final_stats=1 -artifact_prefix="$work/findings/" "$@" "$work/corpus-policy"
fi

"$python" "$here/make_corpus.py" "$work/seeds" >/dev/null

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:allocator_may_return_null=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
# New inputs go to the first directory (the growing corpus); the seeds are
# read every run so that a new seed is always tried.
exec "$bin" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -max_len=8192 \
    -print_final_stats=1 -artifact_prefix="$work/findings/" "$@" \
    "$work/corpus" "$work/seeds"
