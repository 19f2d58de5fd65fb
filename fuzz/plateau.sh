#!/usr/bin/env bash
# Long fuzzing by hand, in segments, to tell when a target has plateaued.
# Each segment resumes from the scratch corpus the one before grew
# (fuzz/corpus-work/<target>, ignored by git) and prints one line: the
# coverage it started and ended at (cov: edges, ft: features) and its
# executions. A segment that adds no edge is the plateau. Then --merge
# adds to the committed seeds only the grown inputs that reach a new edge.
#
# Usage: fuzz/plateau.sh TARGET [SEGMENT_SECONDS] [SEGMENTS]   (600, 3)
#        fuzz/plateau.sh --merge TARGET
# A crash, hang or out-of-memory stops the run with libFuzzer's report;
# the reproducer lands in fuzz/artifacts/<target>/.
set -euo pipefail

cd "$(dirname "$0")/.."
# shellcheck source=fuzz/targets.sh
. fuzz/targets.sh
export RUSTC_BOOTSTRAP=1

if [[ "${1:-}" == --merge ]]; then
    t="${2:?usage: fuzz/plateau.sh --merge TARGET}"
    before=$(find "fuzz/corpus/$t" -type f | wc -l)
    cargo fuzz run "$t" "fuzz/corpus/$t" "fuzz/corpus-work/$t" -- \
        -merge=1 -use_counters=0 $(extra_flags "$t") >/dev/null 2>&1
    echo "plateau: $t seeds $before -> $(find "fuzz/corpus/$t" -type f | wc -l) files"
    exit 0
fi

t="${1:?usage: fuzz/plateau.sh TARGET [SEGMENT_SECONDS] [SEGMENTS]}"
secs="${2:-600}"
segments="${3:-3}"
[[ " ${targets[*]} " == *" $t "* ]] || { echo "plateau: no target $t (${targets[*]})" >&2; exit 2; }
mkdir -p "fuzz/corpus-work/$t" fuzz/corpus-work/logs
cargo fuzz build -O "$t"
# Coverage of keyferry's own functions (src/), from a replay of the corpus
# with -print_coverage=1: the edges covered in them, and how many of their
# uncovered PCs lie on keyferry's own source lines rather than on std or
# dependency code inlined into them. Parsers beneath ours (serde_json,
# toml_edit, std's IP literal parser) keep adding edges of their own for
# hours, so a target that feeds them has plateaued for keyferry when the
# uncovered PCs on src/ lines stop falling.
own_coverage() {
    # shellcheck disable=SC2046
    cargo fuzz run -O "$t" "fuzz/corpus-work/$t" "fuzz/corpus/$t" $(extra_dirs "$t") -- \
        -runs=0 -print_coverage=1 $(extra_flags "$t") 2>&1 |
        awk -v src="$PWD/src/" '
            /^(UN)?COVERED_FUNC/ {
                own = index($NF, src) == 1
                reached = own && /^COVERED_FUNC/
                if (own) for (i = 1; i < NF; i++) if ($i == "edges:") { split($(i + 1), e, "/"); got += e[1]; all += e[2] }
                next
            }
            /UNCOVERED_PC/ && reached && index($2, src) == 1 { left++ }
            END { printf "own edges %d/%d, %d uncovered PCs on src/ lines", got, all, left }'
}
echo "plateau: $t at start: $(own_coverage)"
for i in $(seq "$segments"); do
    log="fuzz/corpus-work/logs/$t-$(date +%Y%m%d-%H%M%S).log"
    # shellcheck disable=SC2046
    cargo fuzz run -O "$t" "fuzz/corpus-work/$t" "fuzz/corpus/$t" $(extra_dirs "$t") -- \
        -max_total_time="$secs" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
        $(extra_flags "$t") >"$log" 2>&1 || { tail -n 40 "$log"; exit 1; }
    start=$(grep -m1 INITED "$log" | grep -oE 'cov: [0-9]+ ft: [0-9]+')
    end=$(grep -E '^#[0-9]+' "$log" | tail -1 | grep -oE 'cov: [0-9]+ ft: [0-9]+')
    execs=$(awk '/number_of_executed_units/ {print $2}' "$log")
    echo "plateau: $t segment $i/$segments, ${secs} s: [$start] -> [$end], $(own_coverage), $execs execs ($log)"
done
