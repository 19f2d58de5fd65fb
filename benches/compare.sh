#!/usr/bin/env bash
# Measures what an operator waits for and what a host must spare, in one run
# on this machine, and writes BENCHMARKS.md:
#   (a) Argon2id at our default parameters (m=65536 KiB, t=3, p=4) vs
#       libsodium's Argon2id (PyNaCl; one lane) at the same memory and passes,
#       as (memory x passes) per second (examples/argon2_rate.rs);
#   (b) `keyferry export` / `keyferry import` of a fresh keyring, wall clock
#       against the KDF alone (target: at most the KDF + 20 ms), and peak
#       memory (max RSS, /usr/bin/time -v) of `keyferry export --with-config`
#       / `keyferry import --accept-config` carrying the largest
#       configuration the payload cap allows (a 63 MiB appsettings.json);
#       target: at most the KDF's memory + 16 MiB.
#
# Usage: benches/compare.sh [OUTPUT.md]     (default BENCHMARKS.md)
# Environment: REPS (default 5), CARGO_TARGET_DIR.
# Installs GNU time and PyNaCl if they are missing (apt-get, pip).
set -euo pipefail

cd "$(dirname "$0")/.."
out_md="${1:-BENCHMARKS.md}"
reps="${REPS:-5}"
target_dir="${CARGO_TARGET_DIR:-target}"
bin="$target_dir/release"

need_apt=()
[[ -x /usr/bin/time ]] || need_apt+=(time)
if ((${#need_apt[@]})); then
    apt-get update -qq && apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
python3 -c 'import nacl.pwhash' 2>/dev/null || pip install -q pynacl

echo "compare: building release binaries" >&2
cargo build --release --quiet --bin keyferry --example argon2_rate

# A work folder in tmpfs when it has room for the bundles, else /tmp.
if [[ -d /dev/shm ]] && (($(df --output=avail -k /dev/shm | tail -1) > 512 * 1024)); then
    work=$(mktemp -d /dev/shm/keyferry-compare.XXXXXX)
else
    work=$(mktemp -d /tmp/keyferry-compare.XXXXXX)
fi
trap 'rm -rf "$work"' EXIT
echo "compare: working in $work" >&2

# value KEY FILE: the value of a key=value line.
value() { grep -E "^$1=" "$2" | tail -1 | cut -d= -f2; }
# max_rss_mib FILE: max RSS reported by /usr/bin/time -v, in MiB.
max_rss_mib() { awk -F': ' '/Maximum resident set size/ {printf "%.1f", $2/1024}' "$1"; }
# wall_s FILE: elapsed wall-clock seconds from /usr/bin/time -v.
wall_s() {
    awk -F': ' '/Elapsed \(wall clock\)/ {n=split($2,a,":"); s=0; for(i=1;i<=n;i++) s=s*60+a[i]; printf "%.3f", s}' "$1"
}
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
calc() { python3 -c "print(f'{$1:.2f}')"; }
calc3() { python3 -c "print(f'{$1:.3f}')"; }

load_before=$(cut -d' ' -f1-3 /proc/loadavg)

declare -A runs=()
add() { runs[$1]="${runs[$1]:-} $2"; }
best() { printf '%s\n' ${runs[$1]} | sort -g | tail -1; }
all() { printf '%s\n' ${runs[$1]} | paste -sd' '; }

# ---- (a) Argon2id ---------------------------------------------------------
# Three interleaved rounds of (ours p=4, ours p=1, libsodium), each the
# median of 5 derivations; the best round of each is reported.
cat >"$work/sodium.py" <<'PY'
import statistics, time
import nacl
from nacl.pwhash import argon2id
salt = b"\x11" * argon2id.SALTBYTES
secs = []
for _ in range(5):
    t = time.perf_counter()
    argon2id.kdf(32, b"argon2 rate password", salt, opslimit=3, memlimit=64 * 1024 * 1024)
    secs.append(time.perf_counter() - t)
med = statistics.median(secs)
print(f"median_seconds={med:.4f}")
print(f"mem_passes_mib_per_s={64 * 3 / med:.1f}")
print(f"pynacl={nacl.__version__}")
PY
for _ in 1 2 3; do
    "$bin/examples/argon2_rate" 65536 3 4 5 2>"$work/argon-p4.log"
    "$bin/examples/argon2_rate" 65536 3 1 5 2>"$work/argon-p1.log"
    python3 "$work/sodium.py" >"$work/sodium.log"
    add argon_p4 "$(value mem_passes_mib_per_s "$work/argon-p4.log")"
    add argon_p1 "$(value mem_passes_mib_per_s "$work/argon-p1.log")"
    add sodium "$(value mem_passes_mib_per_s "$work/sodium.log")"
done
ours_argon_p4=$(best argon_p4) ours_argon_p1=$(best argon_p1) sodium=$(best sodium)
ours_argon_p4_s=$(calc3 "192 / $ours_argon_p4")
ours_argon_p1_s=$(calc3 "192 / $ours_argon_p1")
sodium_s=$(calc3 "192 / $sodium")
pynacl_version=$(value pynacl "$work/sodium.log")

# ---- (b) export / import: time against the KDF, peak memory ---------------
# Time: REPS interleaved rounds of (KDF alone, export, import) of a fresh
# keyring at the default KDF parameters; the quickest round of each.
home_a="$work/node-a" home_b="$work/node-b"
printf 'compare-password-0123\n' >"$work/password"
"$bin/keyferry" init --home "$home_a" >/dev/null 2>&1
for _ in $(seq "$reps"); do
    rm -rf "$home_b" "$work/keys.kfb"
    "$bin/examples/argon2_rate" 65536 3 4 1 2>"$work/kdf.log"
    /usr/bin/time -v "$bin/keyferry" export --home "$home_a" -n "$work/keys.kfb" \
        --password-file "$work/password" >/dev/null 2>"$work/export.log"
    /usr/bin/time -v "$bin/keyferry" import --home "$home_b" -n "$work/keys.kfb" \
        --password-file "$work/password" >/dev/null 2>"$work/import.log" ||
        { cat "$work/import.log" >&2; exit 1; }
    add kdf_s "$(value median_seconds "$work/kdf.log")"
    add export_s "$(wall_s "$work/export.log")"
    add import_s "$(wall_s "$work/import.log")"
    add export_rss "$(max_rss_mib "$work/export.log")"
    add import_rss "$(max_rss_mib "$work/import.log")"
done
least() { printf '%s\n' ${runs[$1]} | sort -g | head -1; }
kdf_s=$(least kdf_s) export_s=$(least export_s) import_s=$(least import_s)
export_rss=$(best export_rss) import_rss=$(best import_rss)

# Memory: the largest configuration the 64 MiB payload cap leaves room for,
# a 63 MiB appsettings.json beside the keyring and ha.toml.
python3 - "$work/appsettings.json" <<'PY'
import json, sys
pad = "x" * (63 * 1024 * 1024 - 64)
open(sys.argv[1], "w").write(json.dumps({"Logging": {"Level": "Info"}, "Pad": pad}))
PY
home_c="$work/node-c" home_d="$work/node-d"
"$bin/keyferry" init --home "$home_c" >/dev/null 2>&1
"$bin/keyferry" ha init --home "$home_c" --node pam-a --primary 10.0.0.1 \
    --secondary 10.0.0.2 --appsettings "$work/appsettings.json" >/dev/null 2>&1
/usr/bin/time -v "$bin/keyferry" export --home "$home_c" -n "$work/config.kfb" --with-config \
    --password-file "$work/password" >/dev/null 2>"$work/export-config.log"
/usr/bin/time -v "$bin/keyferry" import --home "$home_d" -n "$work/config.kfb" \
    --accept-config --node pam-b --password-file "$work/password" >/dev/null 2>"$work/import-config.log" ||
    { cat "$work/import-config.log" >&2; exit 1; }
config_mib=$(calc "$(stat -c %s "$work/config.kfb") / 1048576")
export_config_rss=$(max_rss_mib "$work/export-config.log")
import_config_rss=$(max_rss_mib "$work/import-config.log")
export_config_s=$(wall_s "$work/export-config.log")
import_config_s=$(wall_s "$work/import-config.log")
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

# ---- verdicts --------------------------------------------------------------
r_argon=$(calc "$ours_argon_p4 / $sodium")
r_argon_p1=$(calc "$ours_argon_p1 / $sodium")
over_export_ms=$(python3 -c "print(f'{($export_s - $kdf_s) * 1000:.0f}')")
over_import_ms=$(python3 -c "print(f'{($import_s - $kdf_s) * 1000:.0f}')")
kdf_mib=64
mem_limit=$((kdf_mib + 16))
verdict() { python3 -c "print('met' if $1 else '**not met**')"; }
v_argon=$(verdict "$r_argon >= 1.5")
v_time=$(verdict "$over_export_ms <= 20 and $over_import_ms <= 20")
v_mem=$(verdict "max($export_rss, $import_rss, $export_config_rss, $import_config_rss) <= $mem_limit")

cpu_model=$(lscpu | awk -F': +' '/^Model name/ {print $2; exit}')
cpus=$(nproc)
mem_total=$(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo)

cat >"$out_md" <<EOF
# keyferry benchmarks

Written by \`benches/compare.sh\` on $(date -u +%Y-%m-%d) in one run on one
machine; rerun it to refresh. Criterion micro-benchmarks are separate:
\`cargo bench\` (benches/payload.rs, benches/kdf.rs, benches/export_import.rs).

## Machine

- CPU: $cpu_model, $cpus logical CPUs
- Memory: $mem_total; work files in \`$(dirname "$work")\`
- $(rustc --version), release profile as in Cargo.toml (no \`-C target-cpu\`)
- load average (1/5/15 min) before: $load_before, after: $load_after — the
  machine is shared with other builds, so expect noise of several per cent

## Targets

| target | measured | verdict |
| --- | --- | --- |
| export and import each at most the KDF + 20 ms | KDF $kdf_s s; export $export_s s (+$over_export_ms ms), import $import_s s (+$over_import_ms ms) | $v_time |
| peak memory at most KDF memory + 16 MiB = $mem_limit MiB | export $export_rss, import $import_rss MiB; with a $config_mib MiB bundle: export $export_config_rss, import $import_config_rss MiB | $v_mem |
| Argon2id ≥ 1.5× libsodium (memory × passes / s) | ${r_argon}× | $v_argon |

## (a) Argon2id, m = 65536 KiB, t = 3, best of 3 interleaved rounds (each a median of 5)

| implementation | lanes | seconds | (memory × passes) MiB/s |
| --- | --- | --- | --- |
| keyferry (\`argon2\` crate, \`parallel\`), \`argon2_rate 65536 3 4\` | 4 | $ours_argon_p4_s | $ours_argon_p4 |
| keyferry, one lane, \`argon2_rate 65536 3 1\` | 1 | $ours_argon_p1_s | $ours_argon_p1 |
| libsodium via PyNaCl $pynacl_version, \`argon2id.kdf(opslimit=3, memlimit=64 MiB)\` | 1 | $sodium_s | $sodium |

Ratio keyferry (p=4) / libsodium = $r_argon; at one lane each = $r_argon_p1.
Every round, (memory × passes) MiB/s: keyferry p=4 [$(all argon_p4)],
p=1 [$(all argon_p1)], libsodium [$(all sodium)].
This machine has $cpus CPUs, so four lanes run on at most $cpus threads.

## (b) Export and import, wall clock and peak memory (\`/usr/bin/time -v\`)

Quickest of $reps interleaved rounds of (KDF alone, \`keyferry export\`,
\`keyferry import\`) of a fresh keyring at the default KDF parameters; the
memory column is the highest round.

| run | seconds (every round) | max RSS MiB |
| --- | --- | --- |
| KDF alone, \`argon2_rate 65536 3 4 1\` | $kdf_s ($(all kdf_s)) | |
| \`keyferry export\` | $export_s ($(all export_s)) | $export_rss |
| \`keyferry import\` into a new home | $import_s ($(all import_s)) | $import_rss |
| \`keyferry export --with-config\` (63 MiB appsettings.json, bundle $config_mib MiB) | $export_config_s | $export_config_rss |
| \`keyferry import --accept-config\` of that bundle into a new home | $import_config_s | $import_config_rss |
EOF
# Hand-written findings that outlive a rerun (investigations, caveats).
if [[ -f benches/NOTES.md ]]; then
    printf '\n' >>"$out_md"
    cat benches/NOTES.md >>"$out_md"
fi
echo "compare: wrote $out_md" >&2
