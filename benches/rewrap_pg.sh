#!/usr/bin/env bash
# Rewrap throughput against a plain UPDATE (issue 15): starts a throw-away
# PostgreSQL (as the postgres OS user when run as root), fills a table with
# ROWS (default 1,000,000) 200-byte values under an old key, and prints the
# baseline `UPDATE t SET c = c` rate, keyferry rewrap's rate, and the census
# time before and after (examples/rewrap_bench.rs). Target: rewrap at least
# half the baseline rate.
#
# Usage: benches/rewrap_pg.sh [ROWS]   Environment: PROFILE (release|dev, default release)
set -euo pipefail
cd "$(dirname "$0")/.."
rows="${1:-1000000}"
profile="${PROFILE:-release}"
pgbin="${KEYFERRY_PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)}"
flag=(); dir=debug
if [ "$profile" = release ]; then flag=(--release); dir=release; fi
cargo build "${flag[@]}" --bin keyferry --example rewrap_bench
bin="$PWD/target/$dir/keyferry"

work=$(mktemp -d); chmod 755 "$work"
as_pg() { if [ "$(id -u)" = 0 ]; then (cd / && runuser -u postgres -- "$@"); else "$@"; fi; }
mkdir -p "$work/data" "$work/sock"; [ "$(id -u)" = 0 ] && chown postgres "$work/data" "$work/sock"
port=$(( 20000 + RANDOM % 20000 ))
cleanup() { as_pg "$pgbin/pg_ctl" -D "$work/data" -m fast stop >/dev/null 2>&1 || true; rm -rf "$work"; }
trap cleanup EXIT
echo bench-pw > "$work/pw"; chmod 644 "$work/pw"
as_pg env LC_ALL=C.UTF-8 "$pgbin/initdb" -D "$work/data" --no-sync -U postgres --auth-host=scram-sha-256 --auth-local=trust --pwfile="$work/pw" >/dev/null
cat >> "$work/data/postgresql.conf" <<CONF
port = $port
listen_addresses = '127.0.0.1'
unix_socket_directories = '$work/sock'
shared_buffers = 256MB
max_wal_size = 4GB
CONF
as_pg "$pgbin/pg_ctl" -D "$work/data" -l "$work/sock/log" -w start >/dev/null
echo "127.0.0.1:$port:*:postgres:bench-pw" > "$work/pgpass"; chmod 600 "$work/pgpass"
export PGPASSFILE="$work/pgpass"
home="$work/home"
"$bin" --home "$home" init >/dev/null
"$bin" --home "$home" rotate >/dev/null
dsn="host=127.0.0.1 port=$port user=postgres dbname=postgres"
echo "$(nproc) CPUs, profile $profile, PostgreSQL $("$pgbin/postgres" --version | awk '{print $3}'), $rows rows"
"target/$dir/examples/rewrap_bench" "$home" "$dsn" bench-pw "$rows" "$bin"
