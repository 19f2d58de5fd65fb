#!/usr/bin/env bash
# Bootstrap wall time against plain pg_basebackup (issue 13): two hosts in
# network namespaces (10.214.0.1 primary, 10.214.0.2 secondary), a primary
# of about 1 GB (pgbench scale SCALE, default 70), then ROUNDS interleaved
# rounds of
#   - plain `pg_basebackup -X stream -c fast` into an empty directory on the
#     secondary (the same flags keyferry uses), and
#   - `keyferry ha bootstrap` of a fresh secondary (preflight, the same copy,
#     start, wait until the replica streams and has caught up),
# and a `cp -r` of the primary's data directory (stopped copy, same disk) for
# the copy rate. Prints each time, the medians, keyferry's overhead and the
# target: keyferry at most 5% (or 0.5 s) above pg_basebackup.
#
# Needs root, `ip netns`, PostgreSQL server binaries.
# Usage: benches/bootstrap_pg.sh [SCALE] [ROUNDS]   Environment: PROFILE (release|dev)
set -euo pipefail
cd "$(dirname "$0")/.."
scale="${1:-70}"
rounds="${2:-3}"
profile="${PROFILE:-release}"
pgbin="${KEYFERRY_PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)}"
flag=(); dir=debug
if [ "$profile" = release ]; then flag=(--release); dir=release; fi
cargo build "${flag[@]}" --bin keyferry
bin="$PWD/target/$dir/keyferry"

a="kfbench$$a"; b="kfbench$$b"; va="kvb$$a"; vb="kvb$$b"
A=10.214.0.1; B=10.214.0.2
work=$(mktemp -d); chmod 755 "$work"
in_ns() { local ns=$1; shift; ip netns exec "$ns" "$@"; }
as_pg() { local ns=$1; shift; (cd / && ip netns exec "$ns" runuser -u postgres -- env LC_ALL=C.UTF-8 "$@"); }
cleanup() {
  as_pg "$b" "$pgbin/pg_ctl" -D "$work/b/data" -m immediate stop >/dev/null 2>&1 || true
  as_pg "$a" "$pgbin/pg_ctl" -D "$work/a/data" -m immediate stop >/dev/null 2>&1 || true
  ip netns del "$a" 2>/dev/null || true; ip netns del "$b" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
ip netns add "$a"; ip netns add "$b"
ip link add "$va" type veth peer name "$vb"
ip link set "$va" netns "$a"; ip link set "$vb" netns "$b"
ip -n "$a" addr add $A/24 dev "$va"; ip -n "$b" addr add $B/24 dev "$vb"
for ns in "$a" "$b"; do ip -n "$ns" link set lo up; done
ip -n "$a" link set "$va" up; ip -n "$b" link set "$vb" up

mkdir -p "$work/a/sock" "$work/b/sock" "$work/b/plain"
chown -R postgres "$work/a" "$work/b"
echo bench-pw > "$work/a/pw"; chown postgres "$work/a/pw"
as_pg "$a" "$pgbin/initdb" -D "$work/a/data" --no-sync -U postgres --auth-local=trust \
  --auth-host=scram-sha-256 --pwfile="$work/a/pw" >/dev/null
# The socket directory on the command line, not in postgresql.conf: the
# replica's copy of the file must not point it at the primary's socket
# (one file system here, two hosts in real life).
cat >> "$work/a/data/postgresql.conf" <<CONF
listen_addresses = '$A'
max_wal_size = 4GB
CONF
mkdir -p /var/run/postgresql; chown postgres /var/run/postgresql
echo "host replication repuser $B/32 scram-sha-256" >> "$work/a/data/pg_hba.conf"
echo "host all repuser $B/32 scram-sha-256" >> "$work/a/data/pg_hba.conf"
as_pg "$a" "$pgbin/pg_ctl" -D "$work/a/data" -l "$work/a/log" -o "-k $work/a/sock" -w start >/dev/null
as_pg "$a" "$pgbin/psql" -qh "$work/a/sock" -U postgres -d postgres -c \
  "CREATE ROLE repuser LOGIN REPLICATION PASSWORD 'bench-pw'; GRANT pg_monitor TO repuser;"
as_pg "$a" "$pgbin/pgbench" -i -q -s "$scale" -h "$work/a/sock" -U postgres postgres >/dev/null 2>&1
as_pg "$a" "$pgbin/psql" -qh "$work/a/sock" -U postgres -d postgres -c CHECKPOINT
size=$(as_pg "$a" "$pgbin/psql" -Atqh "$work/a/sock" -U postgres -d postgres -c \
  "SELECT sum(pg_database_size(oid)) FROM pg_database")

echo "$A:5432:replication:repuser:bench-pw" > "$work/b/pgpass"
chown postgres "$work/b/pgpass"; chmod 600 "$work/b/pgpass"
echo bench-pw > "$work/pw"; chmod 600 "$work/pw"
home="$work/home"
in_ns "$b" "$bin" --home "$home" ha init --node bench-b --primary $A --secondary $B \
  --pg-bin "$pgbin" --pg-data "$work/b/data" >/dev/null

now() { date +%s.%N; }
plain_times=(); kf_times=()
plain() {
  rm -rf "$work/b/plain"; mkdir "$work/b/plain"; chown postgres "$work/b/plain"; chmod 700 "$work/b/plain"
  sync
  t0=$(now)
  as_pg "$b" env PGPASSFILE="$work/b/pgpass" "$pgbin/pg_basebackup" -D "$work/b/plain" \
    -h $A -p 5432 -U repuser -w -X stream -c fast
  t1=$(now); plain_times+=("$(echo "$t1 - $t0" | bc)")
}
keyferry() {
  as_pg "$b" "$pgbin/pg_ctl" -D "$work/b/data" -m fast stop >/dev/null 2>&1 || true
  rm -rf "$work/b/data" "$work/b"/data.old-* "$work/b"/data.keyferry-*
  as_pg "$a" "$pgbin/psql" -qh "$work/a/sock" -U postgres -d postgres -c \
    "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots" >/dev/null
  sync
  t0=$(now)
  in_ns "$b" "$bin" --home "$home" ha bootstrap --password-file "$work/pw" 2>&1 >/dev/null | while IFS= read -r l; do if [ -n "${STEPS:-}" ]; then echo "  $(date +%s.%N) $l"; fi; done
  t1=$(now); kf_times+=("$(echo "$t1 - $t0" | bc)")
}
# Alternate which goes first, so neither always inherits the other's
# writeback.
for r in $(seq "$rounds"); do
  if [ $((r % 2)) = 1 ]; then plain; keyferry; else keyferry; plain; fi
  echo "round $r: pg_basebackup ${plain_times[-1]} s, keyferry ha bootstrap ${kf_times[-1]} s"
done
as_pg "$b" "$pgbin/pg_ctl" -D "$work/b/data" -m fast stop >/dev/null 2>&1 || true
as_pg "$a" "$pgbin/pg_ctl" -D "$work/a/data" -m fast -w stop >/dev/null
t0=$(now); cp -r "$work/a/data" "$work/cpcopy"; sync; t1=$(now)
cp_time=$(echo "$t1 - $t0" | bc)

median() { printf '%s\n' "$@" | sort -g | awk '{v[NR]=$1} END {print (NR%2) ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2}'; }
mp=$(median "${plain_times[@]}"); mk=$(median "${kf_times[@]}")
mib=$(echo "$size / 1048576" | bc)
echo "$(nproc) CPUs, profile $profile, PostgreSQL $("$pgbin/postgres" --version | awk '{print $3}'), scale $scale, databases $mib MiB"
echo "median: pg_basebackup $mp s ($(echo "$mib / $mp" | bc) MiB/s), keyferry ha bootstrap $mk s ($(echo "scale=3; $mk / $mp" | bc)x)"
echo "cp -r of the stopped data directory: $cp_time s ($(echo "$mib / $cp_time" | bc) MiB/s)"
echo "target: keyferry <= max(1.05 x, +0.5 s) = $(echo "m = $mp * 1.05; p = $mp + 0.5; if (m > p) m else p" | bc) s"
