#!/usr/bin/env bash
# Windows for real, on a Linux CI machine: build keyferry.exe for
# x86_64-pc-windows-gnu, run it under Wine, and cross-check it against the
# Linux build.
#
#   1. install what is missing (the Rust target, MinGW-w64, Wine);
#   2. build the Windows and the Linux binaries (dev profile), the Windows unit
#      tests, and two test helpers from tests/windows/ (the ProcessPrng shim
#      DLL that Debian 12's Wine 8 lacks, and a DACL reader);
#   3. in a temporary directory and WINEPREFIX: `keyferry.exe selftest`; the
#      Windows unit tests; a Windows export imported by the Linux binary and
#      a Linux export imported by keyferry.exe, fingerprints compared; the
#      DACL of every file and directory keyferry.exe created; the password
#      prompt on a console (driven through a pseudo-terminal), and failing
#      at once without one.
#
# The shim and the DACL reader are test scaffolding: they live only in the
# temporary directory and never ship. Exits non-zero on any failure; the
# last line is the summary. See ../docs/windows.md and
# ../tests/windows/processprng_shim.c.
#
# Environment: CARGO_TARGET_DIR (default <repo>/target); KEEP_WORK=1 keeps
# the temporary directory for inspection.
set -euo pipefail

T0=$SECONDS
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
WIN_TARGET=x86_64-pc-windows-gnu
export CARGO_TARGET_X86_64_PC_WINDOWS_GNU_LINKER=x86_64-w64-mingw32-gcc

log() { printf '== %s (t=%ss)\n' "$*" "$((SECONDS - T0))"; }
# A failing setup step (install, build) ends the script through set -e;
# say so in the same summary format as the checks.
trap 'echo "windows.sh: FAIL — setup step failed at line $LINENO after $((SECONDS - T0))s"' ERR

# ---------------------------------------------------------------- installs
log "installs"
t=$SECONDS
if ! rustup target list --installed | grep -qx "$WIN_TARGET"; then
    rustup target add "$WIN_TARGET"
fi
echo "rustup target: $((SECONDS - t))s"

t=$SECONDS
WINE=""
for w in /usr/lib/wine/wine64 "$(command -v wine64 || true)" "$(command -v wine || true)"; do
    if [[ -n "$w" && -x "$w" ]]; then WINE=$w; break; fi
done
if ! command -v x86_64-w64-mingw32-gcc >/dev/null || [[ -z "$WINE" ]]; then
    SUDO=""
    if [[ $(id -u) -ne 0 ]]; then SUDO=sudo; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq \
        gcc-mingw-w64-x86-64 wine64 >/dev/null
    WINE=/usr/lib/wine/wine64
fi
echo "apt (mingw-w64, wine64): $((SECONDS - t))s"

# ------------------------------------------------------------------ builds
log "builds"
t=$SECONDS
# The dev profile (dependencies optimised, see Cargo.toml): the Linux binary
# is the one `cargo test` already built in .ci/run, and the Windows exe and
# its unit tests share one build of the dependencies. Release builds would
# add minutes to CI and test nothing more.
cargo build --locked --target "$WIN_TARGET"
cargo build --locked
# The unit tests, compiled for Windows: they cover fsutil's DACLs, renames
# and no-clobber moves, and the default home, on the Windows code paths.
WIN_TEST_EXE=$(cargo test --locked --target "$WIN_TARGET" --lib --no-run \
    --message-format=json |
    grep -o '"executable":"[^"]*"' | tail -n1 | cut -d'"' -f4)
echo "cargo builds: $((SECONDS - t))s"
WIN_EXE=$TARGET_DIR/$WIN_TARGET/debug/keyferry.exe
LINUX_BIN=$TARGET_DIR/debug/keyferry
[[ -f "$WIN_EXE" && -x "$LINUX_BIN" && -f "$WIN_TEST_EXE" ]]

WORK=$(mktemp -d "${TMPDIR:-/tmp}/keyferry-windows.XXXXXX")
export WINEPREFIX=$WORK/prefix WINEDEBUG=-all WINEDLLOVERRIDES="mscoree,mshtml="
cleanup() {
    # Stop only the wineserver of our own prefix.
    WINEPREFIX=$WORK/prefix "$(dirname "$WINE")/wineserver" -k 2>/dev/null ||
        wineserver -k 2>/dev/null || true
    if [[ "${KEEP_WORK:-0}" == 1 ]]; then
        echo "kept $WORK"
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT

BIN=$WORK/bin
mkdir -p "$BIN"
cp "$WIN_EXE" "$BIN/keyferry.exe"
cp "$WIN_TEST_EXE" "$BIN/keyferry-unit.exe"
x86_64-w64-mingw32-gcc -shared -O2 -o "$BIN/bcryptprimitives.dll" \
    tests/windows/processprng_shim.c -ladvapi32 -Wl,--kill-at
x86_64-w64-mingw32-gcc -O2 -municode -o "$BIN/dacl_check.exe" \
    tests/windows/dacl_check.c -ladvapi32

# A Linux path as the Windows program sees it (Wine maps / to Z:).
winpath() { printf 'Z:%s' "${1//\//\\}"; }
# Every Wine run is bounded, so a hang (a prompt waiting for input) fails.
wine_run() { timeout 120 "$WINE" "$@"; }
kf_win() { wine_run "$BIN/keyferry.exe" "$@"; }
kf_linux() { "$LINUX_BIN" "$@"; }

PASSED=0
FAILED=()
pass() { PASSED=$((PASSED + 1)); echo "ok   $1"; }
fail() { FAILED+=("$1"); echo "FAIL $1"; }
# The value after "fingerprint " (or "fingerprint after ") in a command's output.
fp_of() { grep -Eo 'kf1:[0-9a-f]{40}' <<<"$1" | tail -n1; }

# ------------------------------------------------------------------- tests
log "wine prefix"
t=$SECONDS
wine_run cmd /c exit 0 >/dev/null 2>&1 || true
echo "prefix: $((SECONDS - t))s"

log "keyferry.exe --version / selftest"
if out=$(kf_win --version 2>&1); then
    pass "keyferry.exe starts under Wine: $out"
else
    fail "keyferry.exe does not start under Wine (exit $?): $out"
fi
if out=$(kf_win selftest 2>&1) && grep -q '^selftest passed' <<<"$out"; then
    pass "keyferry.exe selftest ($(grep -o 'KDF at the default.*' <<<"$out"))"
else
    printf '%s\n' "$out"
    fail "keyferry.exe selftest"
fi

log "Windows unit tests"
if out=$(wine_run "$BIN/keyferry-unit.exe" --test-threads=1 2>&1) &&
    grep -q '^test result: ok' <<<"$out"; then
    pass "unit tests under Wine: $(grep '^test result' <<<"$out")"
else
    printf '%s\n' "$out" | grep -Ev '^test .* ok$' | tail -n 60
    fail "unit tests under Wine"
fi

log "export on Windows, import on Linux"
PW=$WORK/password.txt
printf 'windows-ci correct horse battery staple\r\n' >"$PW"
WIN_HOME=$WORK/win-home
LIN_HOME=$WORK/lin-home
if out=$(kf_win --home "$(winpath "$WIN_HOME")" init 2>&1) && win_fp=$(fp_of "$out") &&
    [[ -n "$win_fp" ]] &&
    out=$(kf_win --home "$(winpath "$WIN_HOME")" export -n "$(winpath "$WORK/from-win.kfb")" \
        --password-file "$(winpath "$PW")" 2>&1) &&
    [[ "$(fp_of "$out")" == "$win_fp" ]] &&
    out=$(kf_linux --home "$LIN_HOME" import -n "$WORK/from-win.kfb" --password-file "$PW" 2>&1) &&
    [[ "$(fp_of "$out")" == "$win_fp" ]] &&
    [[ "$(kf_linux --home "$LIN_HOME" keys fingerprint)" == "$win_fp" ]]; then
    pass "Windows export -> Linux import: $win_fp on both"
else
    printf '%s\n' "$out"
    fail "Windows export -> Linux import"
fi

log "export on Linux, import on Windows"
LIN2_HOME=$WORK/lin2-home
WIN2_HOME=$WORK/win2-home
if out=$(kf_linux --home "$LIN2_HOME" init 2>&1) && lin_fp=$(fp_of "$out") &&
    [[ -n "$lin_fp" ]] &&
    out=$(kf_linux --home "$LIN2_HOME" export -n "$WORK/from-linux.kfb" --armor \
        --password-file "$PW" 2>&1) &&
    out=$(kf_win --home "$(winpath "$WIN2_HOME")" import -n "$(winpath "$WORK/from-linux.kfb")" \
        --password-file "$(winpath "$PW")" 2>&1) &&
    [[ "$(fp_of "$out")" == "$lin_fp" ]] &&
    [[ "$(kf_win --home "$(winpath "$WIN2_HOME")" keys fingerprint | tr -d '\r')" == "$lin_fp" ]]; then
    pass "Linux export -> Windows import into a new home: $lin_fp on both"
else
    printf '%s\n' "$out"
    fail "Linux export -> Windows import into a new home"
fi
# Into the first Windows home: replaces keyring.json over an existing one
# (MoveFileExW REPLACE_EXISTING) and keeps a backup. The two homes hold
# different keys, so the import must be told to replace them.
if out=$(kf_win --home "$(winpath "$WIN_HOME")" import -n "$(winpath "$WORK/from-linux.kfb")" \
    --password-file "$(winpath "$PW")" --replace-keys 2>&1) &&
    [[ "$(fp_of "$out")" == "$lin_fp" ]] &&
    ls "$WIN_HOME"/backups/keyring.json.*.bak >/dev/null 2>&1 &&
    out=$(kf_win --home "$(winpath "$WIN_HOME")" audit verify 2>&1); then
    pass "Linux export -> Windows import over an existing keyring (backup kept, audit verifies)"
else
    printf '%s\n' "$out"
    fail "Linux export -> Windows import over an existing keyring"
fi
if [[ -z "$(find "$WORK" -name '.keyferry-*.tmp')" ]]; then
    pass "no staged .tmp file left behind"
else
    fail "staged files left behind: $(find "$WORK" -name '.keyferry-*.tmp')"
fi

log "DACLs of what keyferry.exe created"
# Every file and directory keyferry.exe created must carry the owner-only
# DACL: allow ACEs for the user, SYSTEM and Administrators only (OICI on
# directories), read back with the Win32 API by a separate program.
#
# What Wine can show: Wine 8 keeps no security descriptor on disk. It turns
# the DACL given at creation into Unix mode bits, and GetNamedSecurityInfoW
# synthesizes a DACL from those bits (SY + owner, plus an Everyone read ACE
# when "other" may read), without the protected flag and without the
# Administrators ACE. So under Wine this check proves that keyferry passed an
# owner-only descriptor when it created each file (a control file that Wine's
# cmd creates without one shows the Everyone ACE), but only real Windows shows the exact
# "D:P(...)(...SY)(...BA)" form; that stricter form is required when the
# DACL says it is protected.
wine_run cmd /c "echo control> $(winpath "$WORK/control.txt")" >/dev/null 2>&1 || true
mapfile -t created < <(find "$WIN_HOME" "$WIN2_HOME" "$WORK/from-win.kfb")
args=("$(winpath "$WORK/control.txt")")
for f in "${created[@]}"; do args+=("$(winpath "$f")"); done
user_ace='S-1-5-21-[0-9-]+'
if sddl=$(wine_run "$BIN/dacl_check.exe" "${args[@]}" 2>&1); then
    bad=0
    n=0
    protected=0
    while IFS=$'\t' read -r path sd; do
        sd=${sd%$'\r'}
        dacl=D:${sd#*D:}
        linux=$(sed -e 's/^Z://' -e 's/\\/\//g' <<<"$path")
        if [[ "$linux" == "$WORK/control.txt" ]]; then
            control=$dacl
            continue
        fi
        n=$((n + 1))
        if [[ -d "$linux" ]]; then inh=OICI; else inh=""; fi
        ace="\\(A;$inh;FA;;;($user_ace|SY|BA)\\)"
        if [[ "$dacl" == D:P* ]]; then
            protected=$((protected + 1))
            re="^D:P($ace){3}\$"
        else
            re="^D:($ace){2,3}\$"
        fi
        if [[ ! "$dacl" =~ $re ]]; then
            echo "  wrong DACL: $path $dacl"
            bad=1
        fi
    done <<<"$sddl"
    echo "  keyring.json: $(grep 'win-home.keyring.json' <<<"$sddl" | head -n1 | cut -f2)"
    echo "  control file: ${control:-?}"
    if [[ "${control:-}" != *";;;WD)"* ]]; then
        echo "  the control file shows no Everyone ACE: this check cannot tell DACLs apart here"
        bad=1
    fi
    if [[ $bad == 0 && $n -eq ${#created[@]} ]]; then
        pass "owner-only DACL on all $n files and directories keyferry.exe created ($protected shown as protected)"
    else
        fail "DACLs of created files"
    fi
else
    printf '%s\n' "$sddl"
    fail "reading DACLs"
fi

log "a pre-existing home other accounts can read"
# Made by cmd, so it gets Wine's default descriptor (the control file's,
# with its Everyone entry): keyferry uses it and says how to restrict it.
shared="$WORK/shared-home"
wine_run cmd /c "mkdir $(winpath "$shared")" >/dev/null 2>&1 || true
if [[ "${control:-}" != *";;;WD)"* ]]; then
    echo "  skipped: Wine shows no Everyone entry here, so sharing cannot be seen"
elif out=$(kf_win init --home "$(winpath "$shared")" 2>&1) &&
    grep -q 'can be read by other accounts.*icacls' <<<"$out"; then
    pass "shared home: used, with a warning naming icacls"
else
    fail "shared home: no warning, or init failed: $out"
fi

log "password prompt without a console"
t=$SECONDS
if out=$(kf_win --home "$(winpath "$WIN2_HOME")" \
    import -n "$(winpath "$WORK/from-linux.kfb")" </dev/null 2>&1); then
    fail "import without a password source or console succeeded"
elif grep -q 'no console to ask on' <<<"$out" && ((SECONDS - t < 30)); then
    pass "no console, no source: refused at once ($((SECONDS - t))s)"
else
    printf '%s\n' "$out"
    fail "no console, no source: expected the NoTerminal error at once"
fi
# With a console (Wine makes one from a pseudo-terminal), the password is
# typed at the prompt, not echoed, and a wrong one is refused with exit 3.
PROMPT=tests/windows/console_prompt.py
WIN3_HOME=$WORK/win3-home
typed_pw=$(head -n1 "$PW" | tr -d '\r')
if out=$(python3 "$PROMPT" "wrong password typed here" "$WINE" "$BIN/keyferry.exe" \
    --home "$(winpath "$WIN3_HOME")" import -n "$(winpath "$WORK/from-linux.kfb")" 2>&1); then
    fail "console prompt: a wrong password was accepted"
elif [[ $? == 3 ]]; then
    pass "console prompt: a wrong typed password is refused (exit 3)"
else
    printf '%s\n' "$out"
    fail "console prompt: wrong password, expected exit 3"
fi
if out=$(python3 "$PROMPT" "$typed_pw" "$WINE" "$BIN/keyferry.exe" \
    --home "$(winpath "$WIN3_HOME")" import -n "$(winpath "$WORK/from-linux.kfb")" 2>&1) &&
    [[ "$(fp_of "$out")" == "$lin_fp" ]] && [[ "$out" != *"$typed_pw"* ]]; then
    pass "console prompt: typed password imports, no echo"
else
    printf '%s\n' "$out"
    fail "console prompt: typed password"
fi
if out=$(kf_win --home "$(winpath "$WIN2_HOME")" import -n "$(winpath "$WORK/from-linux.kfb")" \
    --password-fd 0 </dev/null 2>&1); then
    fail "--password-fd accepted on Windows"
elif grep -q 'password-fd is not available on this platform' <<<"$out"; then
    pass "--password-fd refused on Windows with a clear error"
else
    printf '%s\n' "$out"
    fail "--password-fd on Windows: unexpected error"
fi

# ---------------------------------------------------------------- summary
elapsed=$((SECONDS - T0))
if ((${#FAILED[@]} == 0)); then
    echo "windows.sh: PASS — $PASSED checks passed under $("$WINE" --version) in ${elapsed}s"
else
    echo "windows.sh: FAIL — ${#FAILED[@]} failed, $PASSED passed in ${elapsed}s:"
    printf '  - %s\n' "${FAILED[@]}"
    exit 1
fi
