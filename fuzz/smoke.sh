#!/usr/bin/env bash
# Fuzz smoke for CI: builds every cargo-fuzz target (stable toolchain with
# RUSTC_BOOTSTRAP=1, AddressSanitizer) and runs each for a short time from
# the committed seed corpus plus the repository's test vectors. Exits
# non-zero if any target crashes, hangs (-timeout), or runs out of memory.
#
# Usage: fuzz/smoke.sh [SECONDS_PER_TARGET]   (default 30; or FUZZ_SMOKE_SECS)
#
# The smoke is close to repeatable: a fixed seed and a fixed number of runs
# per target (about 30 s each here), so a CI run retraces what passed on the
# developer's machine instead of rolling new dice (the order in which the
# file system lists corpus files can still shift it a little);
# SECONDS_PER_TARGET only caps a slow machine. Exploration happens in long runs by hand (see
# fuzz/README.md), and every finding becomes a regression test.
# One in-process job per target (libFuzzer's -jobs=1 would fork a worker
# and leave fuzz-0.log in the working tree; a single job is the default).
# New inputs found during the smoke go to a temporary folder, never into the
# committed corpus. Crash reproducers land in fuzz/artifacts/<target>/.
set -euo pipefail

cd "$(dirname "$0")/.."
secs="${1:-${FUZZ_SMOKE_SECS:-30}}"
# shellcheck source=fuzz/targets.sh
. fuzz/targets.sh

if ! command -v cargo-fuzz >/dev/null 2>&1; then
    echo "fuzz smoke: installing cargo-fuzz (about 1.5 min on a 2-core machine)"
    cargo install cargo-fuzz --locked
fi
export RUSTC_BOOTSTRAP=1

start=$(date +%s)
cargo fuzz build
echo "fuzz smoke: build took $(( $(date +%s) - start )) s"

# Runs per target: about 30 s each on a 2-core machine under ASan.
runs_for() {
    case "$1" in
        bundle_open) echo 12000 ;;
        armor) echo 400000 ;;
        payload_zip) echo 300000 ;;
        documents) echo 40000 ;;
        hba) echo 60000 ;;
        stream_damage) echo 2000 ;;
        envelope) echo 300000 ;;
        distribution) echo 20000 ;;
    esac
}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failed=()
for t in "${targets[@]}"; do
    mkdir -p "$work/$t"
    log="$work/$t.log"
    # shellcheck disable=SC2046
    if cargo fuzz run "$t" "$work/$t" "fuzz/corpus/$t" $(extra_dirs "$t") -- \
        -seed=1 -runs="$(runs_for "$t")" -max_total_time="$((secs * 3))" \
        -rss_limit_mb=2048 -timeout=10 \
        -print_final_stats=1 $(extra_flags "$t") >"$log" 2>&1; then
        summary=$(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -1 || true)
        echo "fuzz smoke: $t ok: ${summary:-no DONE line}"
    else
        echo "fuzz smoke: $t FAILED; last lines of its log:"
        tail -n 40 "$log"
        failed+=("$t")
    fi
done

if ((${#failed[@]})); then
    echo "fuzz smoke: FAILED targets: ${failed[*]} (reproducers in fuzz/artifacts/)"
    exit 1
fi
echo "fuzz smoke: all ${#targets[@]} targets ran their fixed-seed runs without a finding"
