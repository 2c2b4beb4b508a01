#!/usr/bin/env bash
# Fuzzes every target of fuzz/ (cargo-fuzz, libFuzzer) for SECONDS each (default 20) on the
# stable toolchain. Fails on any crash, panic, failed assertion, timeout or out-of-memory, and
# prints the reproducer's path; prints each target's runs, exec/s and coverage.
#
#   tests/fuzz/run.sh [SECONDS]         e.g. tests/fuzz/run.sh 600 for a longer run
#   FUZZ_TARGETS="snapshot arm_response" tests/fuzz/run.sh 60
#
# cargo-fuzz is installed once into $PODID_CACHE_DIR/cargo-fuzz; the targets are built into
# $PODID_CACHE_DIR/target-fuzzing. Each target's corpus grows in $PODID_CACHE_DIR/fuzz/corpus
# from the seeds in fuzz/seeds/<target> and the repository's fixtures, so a later run starts
# where the last one stopped; crashing inputs land in $PODID_CACHE_DIR/fuzz/artifacts.
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$(pwd)

seconds="${1:-20}"
case "$seconds" in
  '' | *[!0-9]*) echo "usage: tests/fuzz/run.sh [SECONDS]" >&2; exit 2 ;;
esac
cache="${PODID_CACHE_DIR:-$HOME/.cache/podid}"
cargo_fuzz_version=0.13.2
tool_root="$cache/cargo-fuzz"
export CARGO_TARGET_DIR="$cache/target-fuzzing"
work="$cache/fuzz"
mkdir -p "$work"

# cargo-fuzz itself: a cargo subcommand built from crates.io with the stable toolchain.
if ! "$tool_root/bin/cargo-fuzz" --version 2>/dev/null | grep -qx "cargo-fuzz $cargo_fuzz_version"; then
  echo "installing cargo-fuzz $cargo_fuzz_version into $tool_root"
  nice -n 10 cargo install cargo-fuzz --locked --version "$cargo_fuzz_version" \
    --root "$tool_root" --target-dir "$tool_root/build"
fi
export PATH="$tool_root/bin:$PATH"

targets=(${FUZZ_TARGETS:-$(cargo fuzz list --fuzz-dir fuzz)})
[ ${#targets[@]} -gt 0 ] || { echo "no fuzz targets found" >&2; exit 1; }

# libFuzzer (built by libfuzzer-sys with the machine's C++ compiler) and coverage
# instrumentation are stable rustc flags; no sanitizer: the fuzzed code is safe Rust, and
# debug assertions and overflow checks stay on. Optimised, 16 codegen units: a faster build
# for a slightly slower run.
build_start=$(date +%s)
build() {
  nice -n 10 cargo fuzz build --fuzz-dir fuzz --release --debug-assertions --sanitizer none \
    --codegen-units 16 "$@" >>"$work/build.log" 2>&1
}
: >"$work/build.log"
if [ -n "${FUZZ_TARGETS:-}" ]; then
  for t in "${targets[@]}"; do build "$t" || build_failed=1; done
else
  build || build_failed=1
fi
if [ -n "${build_failed:-}" ]; then
  tail -n 60 "$work/build.log"
  echo "FAILED: building the fuzz targets (log: $work/build.log)" >&2
  exit 1
fi
echo "built ${#targets[@]} fuzz targets in $(( $(date +%s) - build_start ))s"
bin_dir="$CARGO_TARGET_DIR/x86_64-unknown-linux-gnu/release"

# Seeds beyond fuzz/seeds: the repository's own examples of each input.
fixtures() {
  case "$1" in
    snapshot) ls migrate-cli/examples/*.yaml tests/fixtures/*.yaml ;;
    arm_response) ls tests/azure-emulator/tests/examples/*.json ;;
  esac
}

failed=0
printf '\n%-16s %10s %8s %15s %7s  %s\n' target runs exec/s "cov start->end" corpus result
for t in "${targets[@]}"; do
  corpus="$work/corpus/$t"
  artifacts="$work/artifacts/$t"
  log="$work/logs/$t.log"
  mkdir -p "$corpus" "$artifacts" "$(dirname "$log")"
  for f in fuzz/seeds/"$t"/*; do
    [ -f "$f" ] && { [ -e "$corpus/seed-$(basename "$f")" ] || cp "$f" "$corpus/seed-$(basename "$f")"; }
  done
  for f in $(fixtures "$t"); do
    [ -e "$corpus/fixture-$(basename "$f")" ] || cp "$f" "$corpus/fixture-$(basename "$f")"
  done
  rc=0
  "$bin_dir/$t" "$corpus" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
    -print_final_stats=1 -artifact_prefix="$artifacts/" >"$log" 2>&1 &
  pid=$!
  wait "$pid" || rc=$?
  # azure_config's scratch files (azure.json, the environment file), named by its process.
  rm -rf "/dev/shm/podid-fuzz-azure-$pid" "${TMPDIR:-/tmp}/podid-fuzz-azure-$pid"
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
  speed=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)
  cov_start=$(grep -m 1 -oE 'INITED cov: [0-9]+' "$log" | grep -oE '[0-9]+$' || true)
  cov_end=$(grep -oE '^#[0-9]+.* cov: [0-9]+' "$log" | tail -n 1 | grep -oE '[0-9]+$' || true)
  corp=$(grep -oE 'corp: [0-9]+' "$log" | tail -n 1 | grep -oE '[0-9]+$' || true)
  if [ "$rc" = 0 ]; then
    result=ok
  else
    result="CRASH (exit $rc)"
    failed=1
  fi
  printf '%-16s %10s %8s %15s %7s  %s\n' "$t" "${runs:-?}" "${speed:-?}" \
    "${cov_start:-?}->${cov_end:-?}" "${corp:-?}" "$result"
  if [ "$rc" != 0 ]; then
    reproducer=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -n 1)
    echo "---- $t: libFuzzer's report (full log: $log)"
    # The panic and its message (the backtrace is in the log), then libFuzzer's verdict.
    awk '/panicked at/ { p = 1 } /^stack backtrace:/ { p = 0 } p' "$log" | head -n 30
    grep -E '^(==[0-9]+== ERROR|ALARM|SUMMARY|MS:)' "$log" | head -n 10
    echo "---- reproducer: ${reproducer:-(none written; see the log)}"
    if [ -n "$reproducer" ] && [ -f "$reproducer" ]; then
      echo "---- its first 512 bytes:"
      head -c 512 "$reproducer" | od -c | head -n 40
      echo "---- replay: $bin_dir/$t $reproducer"
    fi
  fi
done

if [ "$failed" != 0 ]; then
  echo "FAILED: a fuzz target crashed (reproducers above); add the input as a regression test" >&2
  exit 1
fi
echo "fuzzing: ${#targets[@]} targets, ${seconds}s each, no crash"
