#!/usr/bin/env bash
# Builds the libFuzzer targets (clang, with ASan + UBSan) and runs each for a
# bounded time. Seeds: the real Nginx lines in tests/fixtures.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET]     # default 30
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-30}
out=${FUZZ_DIR:-build-fuzz}
mkdir -p "$out/corpus-logline" "$out/corpus-decoder" "$out/corpus-recording"
CXX=${CXX_FUZZ:-clang++}
flags=(-std=c++20 -O1 -g -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all
       -DFMT_HEADER_ONLY -DN502_VERSION='"fuzz"' -Iinclude -Iuser)
core=(user/logline.cpp user/accesslog.cpp)
state=(user/decoder.cpp user/state.cpp user/correlator.cpp user/rules.cpp user/host.cpp user/nginx.cpp user/procscan.cpp user/sockdiag.cpp
       user/container.cpp user/logfollow.cpp user/nginxconf.cpp
       user/timebase.cpp user/logline.cpp user/accesslog.cpp user/keyedhash.cpp)
echo "fuzz.sh: building"
$CXX "${flags[@]}" tests/fuzz/fuzz_logline.cpp "${core[@]}" user/sinks.cpp user/decoder.cpp user/timebase.cpp user/container.cpp \
  -o "$out/fuzz_logline"
$CXX "${flags[@]}" tests/fuzz/fuzz_decoder.cpp "${state[@]}" -o "$out/fuzz_decoder"
$CXX "${flags[@]}" tests/fuzz/fuzz_recording.cpp "${state[@]}" user/engine.cpp user/recording.cpp user/sinks.cpp \
  user/ratelimit.cpp -lz -o "$out/fuzz_recording"
# Seed the line fuzzer with every real line we have.
i=0
while IFS= read -r line; do
  case "$line" in "#"*|"") continue ;; esac
  printf '%s' "$line" > "$out/corpus-logline/seed-$i"; i=$((i + 1))
done < tests/fixtures/error_log_lines.txt
# Seed the recording fuzzer with a header: magic, format version 1, segment 0.
printf 'N502REC\n\001\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0' > "$out/corpus-recording/seed-header"
# ... and, in the target's record mode (odd first byte), one empty Config record.
printf '\001\0\0\001\0' > "$out/corpus-recording/seed-records"
for t in logline decoder recording; do
  echo "fuzz.sh: fuzz_$t for ${secs}s"
  rc=0
  "$out/fuzz_$t" -max_total_time="$secs" -max_len=4096 -print_final_stats=1 -artifact_prefix="$out/" \
    "$out/corpus-$t" > "$out/fuzz_$t.log" 2>&1 || rc=$?
  grep -E "stat::number_of_executed_units|Done" "$out/fuzz_$t.log" || true
  if [ "$rc" -ne 0 ]; then
    echo "fuzz.sh: fuzz_$t failed (exit $rc); the input is in $out/crash-* :" >&2
    grep -E "ERROR|SUMMARY|runtime error" -A20 "$out/fuzz_$t.log" | head -60 >&2
    exit 1
  fi
done
echo "fuzz.sh: no crash"
