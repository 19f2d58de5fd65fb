#!/usr/bin/env bash
# Rejoin of a crashed old primary by pg_rewind against a fresh bootstrap of
# the same cluster (issue 19), in one run: two hosts in network namespaces
# (10.215.0.1 primary A, 10.215.0.2 secondary B), a primary of about 1 GiB
# (pgbench scale SCALE, default 70, wal_log_hints on), B bootstrapped from
# it with keyferry, then
#   - A killed (SIGKILL to the postmaster and its processes: a power loss),
#   - `keyferry ha failover` on B,
#   - about 1% of the data changed on B (UPDATE of the first 1% of
#     pgbench_accounts, contiguous, so about 1% of its pages),
#   - timed: `keyferry ha rejoin` on A (crash recovery in single-user mode,
#     pg_rewind, start, wait until streaming),
#   - timed: `keyferry ha bootstrap --yes` on A (a fresh copy of B: what the
#     rejoin would cost without pg_rewind; the rewound data directory is
#     kept aside as data.old-…).
# Prints both, the ratio and the target: rewind <= 0.2 x bootstrap.
#
# The link between the hosts is shaped like the network between a pair's
# two machines (LINK, default 1gbit: a token bucket, tc tbf, at that rate
# on each end; this machine's kernel has no netem for a delay); LINK=none leaves the veth pair as it is, a memory copy on one
# machine, on which a base backup of 1 GiB takes about a second and no
# network a pair runs on is that fast. Both are reported in BENCHMARKS.md.
#
# The machine's load average is printed with each figure: on a shared
# machine the syncs dominate and vary with other programs' writes, so
# compare only within one run. The rejoin's step log includes the sync
# after `pg_rewind --no-sync` (keyferry's own log, KEYFERRY_LOG below).
#
# Needs root, `ip netns`, PostgreSQL server binaries, ~4 GiB free under
# TMPDIR. Usage: benches/rejoin_pg.sh [SCALE]
# Environment: PROFILE (release|dev), WAL_KEEP (wal_keep_size, 256MB),
# LINK (the link's rate for tc tbf, e.g. 1gbit or 10gbit; none),
# KEYFERRY_BIN (a keyferry binary to measure instead of building one, e.g.
# an older build to compare with).
set -euo pipefail
cd "$(dirname "$0")/.."
scale="${1:-70}"
profile="${PROFILE:-release}"
pgbin="${KEYFERRY_PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)}"
if [ -n "${KEYFERRY_BIN:-}" ]; then
  bin=$(realpath "$KEYFERRY_BIN"); profile="given ($bin)"
else
  flag=(); dir=debug
  if [ "$profile" = release ]; then flag=(--release); dir=release; fi
  cargo build "${flag[@]}" --bin keyferry
  bin="$PWD/target/$dir/keyferry"
fi
load() { cut -d' ' -f1-3 /proc/loadavg; }

a="kfrj$$a"; b="kfrj$$b"; va="krj$$a"; vb="krj$$b"
A=10.215.0.1; B=10.215.0.2
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
link="${LINK:-1gbit}"
if [ "$link" != none ]; then
  for ns in "$a" "$b"; do
    dev=$va; [ "$ns" = "$b" ] && dev=$vb
    ip netns exec "$ns" tc qdisc add dev "$dev" root tbf rate "$link" burst 1mb latency 50ms
  done
fi

mkdir -p "$work/a/sock" "$work/b/sock"
chown -R postgres "$work/a" "$work/b"
echo bench-pw > "$work/a/pw"; chown postgres "$work/a/pw"
as_pg "$a" "$pgbin/initdb" -D "$work/a/data" --no-sync -U postgres --auth-local=trust \
  --auth-host=scram-sha-256 --pwfile="$work/a/pw" >/dev/null
# Both hosts' lines in pg_hba.conf before the copy: B's copy lets A in for
# the rewind and the rejoin. Each host's socket directory in a file beside
# its data directory (one file system here, two hosts in real life), which
# the copies' postgresql.conf includes relative to their own place.
cat >> "$work/a/data/postgresql.conf" <<CONF
include_if_exists = '../host.conf'
listen_addresses = '*'
max_wal_size = 4GB
wal_log_hints = on
wal_keep_size = ${WAL_KEEP:-256MB}
CONF
for h in $A $B; do
  echo "host replication repuser $h/32 scram-sha-256" >> "$work/a/data/pg_hba.conf"
  echo "host all repuser $h/32 scram-sha-256" >> "$work/a/data/pg_hba.conf"
done
for h in a b; do echo "unix_socket_directories = '$work/$h/sock'" > "$work/$h/host.conf"; chown postgres "$work/$h/host.conf"; done
psql_a() { as_pg "$a" "$pgbin/psql" -qAtX -h "$work/a/sock" -U postgres -d postgres "$@"; }
as_pg "$a" "$pgbin/pg_ctl" -D "$work/a/data" -l "$work/a/log" -w start >/dev/null
psql_a -c "CREATE ROLE repuser LOGIN REPLICATION PASSWORD 'bench-pw'; GRANT pg_monitor TO repuser;
  GRANT EXECUTE ON FUNCTION pg_catalog.pg_promote(boolean, integer) TO repuser;
  GRANT EXECUTE ON FUNCTION pg_catalog.pg_ls_dir(text, boolean, boolean) TO repuser;
  GRANT EXECUTE ON FUNCTION pg_catalog.pg_stat_file(text, boolean) TO repuser;
  GRANT EXECUTE ON FUNCTION pg_catalog.pg_read_binary_file(text) TO repuser;
  GRANT EXECUTE ON FUNCTION pg_catalog.pg_read_binary_file(text, bigint, bigint, boolean) TO repuser;"
as_pg "$a" "$pgbin/pgbench" -i -q -s "$scale" -h "$work/a/sock" -U postgres postgres >/dev/null 2>&1
psql_a -c CHECKPOINT
size=$(psql_a -c "SELECT sum(pg_database_size(oid)) FROM pg_database")

echo bench-pw > "$work/pw"; chmod 600 "$work/pw"
home_a="$work/home-a"; home_b="$work/home-b"
kf_a() { in_ns "$a" "$bin" --home "$home_a" "$@"; }
kf_b() { in_ns "$b" "$bin" --home "$home_b" "$@"; }
kf_a init >/dev/null 2>&1; kf_b init >/dev/null 2>&1
kf_a ha init --node bench-a --primary $A --secondary $B --pg-bin "$pgbin" --pg-data "$work/a/data" >/dev/null
kf_b ha init --node bench-b --primary $A --secondary $B --pg-bin "$pgbin" --pg-data "$work/b/data" >/dev/null
kf_b ha bootstrap --yes --password-file "$work/pw" --timeout 600 >/dev/null 2>&1

# A power loss on A.
pid=$(head -1 "$work/a/data/postmaster.pid")
kids=$(ps -o pid= --ppid "$pid" || true)
kill -9 "$pid" $kids
while kill -0 "$pid" 2>/dev/null || { [ -n "$kids" ] && ps -o pid= -p "$(echo $kids | tr ' ' ,)" >/dev/null; }; do sleep 0.1; done
kf_b ha failover --password-file "$work/pw" --timeout-ms 1000 >/dev/null
rows=$((scale * 1000))
psql_b() { as_pg "$b" "$pgbin/psql" -qAtX -h "$work/b/sock" -U postgres -d postgres "$@"; }
psql_b -c "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid <= $rows"
psql_b -c CHECKPOINT
sync

now() { date +%s.%N; }
load_rejoin=$(load)
t0=$(now)
# Each line keyferry prints, with the seconds since the start: where the
# time goes.
stamp() { while IFS= read -r l; do printf '  %7.3f s  %s\n' "$(echo "$(now) - $t0" | bc)" "$l"; done; }
KEYFERRY_LOG="keyferry::pg::rewind=info,keyferry::pg::recovery=info" \
  kf_a ha rejoin --password-file "$work/pw" --timeout 600 2>&1 | stamp >"$work/rejoin.out" \
  || { cat "$work/rejoin.out" "$work/a/data.pg_ctl.log"; exit 1; }
t1=$(now); rewind=$(echo "$t1 - $t0" | bc)
grep -q "rewind" "$work/rejoin.out" && grep -q "after crash recovery" "$work/rejoin.out" \
  || { echo "the rejoin did not rewind after crash recovery:"; cat "$work/rejoin.out"; exit 1; }
sync
load_boot=$(load)
t0=$(now)
kf_a ha bootstrap --yes --password-file "$work/pw" --timeout 600 2>&1 | stamp >"$work/bootstrap.out" \
  || { cat "$work/bootstrap.out"; exit 1; }
t1=$(now); boot=$(echo "$t1 - $t0" | bc)

mib=$(echo "$size / 1048576" | bc)
echo "link between the hosts: $link"
echo "$(nproc) CPUs, profile $profile, PostgreSQL $("$pgbin/postgres" --version | awk '{print $3}'), scale $scale, databases $mib MiB, $rows rows of pgbench_accounts changed after the failover"
echo "rejoin of the crashed primary (crash recovery + pg_rewind + streaming): $rewind s (load average $load_rejoin)"
echo "fresh bootstrap of the same node:                                      $boot s (load average $load_boot)"
echo "ratio: $(echo "scale=3; $rewind / $boot" | bc) (target <= 0.2)"
echo "rejoin's steps:"; cat "$work/rejoin.out"
echo "bootstrap's steps:"; head -20 "$work/bootstrap.out"
