#!/usr/bin/env bash
# Autobahn|Testsuite (fuzzingclient mode) against rsasgi serving tests/autobahn/echo_app.py:app.
#
#   bash tests/autobahn/run.sh                     # rsasgi, 1.* to 10.* and 64 of 12.*, 13.*
#   bash tests/autobahn/run.sh --cases '12.*,13.*' --timeout 2400   # all of deflate's cases
#   bash tests/autobahn/run.sh --server uvicorn    # the same run against uvicorn, for comparison
#   bash tests/autobahn/run.sh --cases '5.*,9.1.*' # a subset
#
# Needs: a Python 3 venv with rsasgi installed ($VENV, default .venv at the repository root),
# and Python 2.7 with its headers (autobahntestsuite is Python 2 only): $PY27, else python2.7 on
# PATH, else pyenv's 2.7.x. The first run creates a Python 2.7 virtualenv in
# tests/.work/autobahn-venv with the pins of tests/autobahn/requirements-py27.txt (from PyPI;
# about a minute); later runs reuse it. Reports go to tests/.work/autobahn/reports/servers
# (index.html to browse, index.json for tests/autobahn/summary.py).
#
# Exit status: 0 when no case failed; 1 when a case failed; 2 when the report is missing or
# empty (or a bad command line); 3 when the setup failed or wstest did not finish within
# --timeout seconds (default 900: the default cases take a few minutes; all of 12.* and 13.*,
# `--cases '12.*,13.*' --timeout 2400`, echo a thousand compressed messages of up to 128 KiB
# per case, about 11 minutes each on a busy 2-core machine, mostly in wstest itself).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
HERE=$ROOT/tests/autobahn
WORK=$ROOT/tests/.work/autobahn
AB_VENV=$ROOT/tests/.work/autobahn-venv
BOOT=$ROOT/tests/.work/autobahn-bootstrap
VENV=${VENV:-$ROOT/.venv}
PY3=$VENV/bin/python

SERVER=rsasgi
# 1.* to 10.*, and of permessage-deflate's 12.* and 13.* each data set and each parameter
# combination with messages of 16 B to 4 KiB (cases x.y.1 to x.y.5), and some of 8 KiB in
# 256-byte fragments (x.y.11): 64 of the 216, the rest taking most of 20 minutes.
DEFLATE_CASES="12.1.1,12.1.2,12.1.3,12.1.4,12.1.5,12.2.1,12.2.2,12.2.3,12.2.4,12.2.5,12.3.1,12.3.2,12.3.3,12.3.4,12.3.5,12.4.1,12.4.2,12.4.3,12.4.4,12.4.5,12.5.1,12.5.2,12.5.3,12.5.4,12.5.5,13.1.1,13.1.2,13.1.3,13.1.4,13.1.5,13.2.1,13.2.2,13.2.3,13.2.4,13.2.5,13.3.1,13.3.2,13.3.3,13.3.4,13.3.5,13.4.1,13.4.2,13.4.3,13.4.4,13.4.5,13.5.1,13.5.2,13.5.3,13.5.4,13.5.5,13.6.1,13.6.2,13.6.3,13.6.4,13.6.5,13.7.1,13.7.2,13.7.3,13.7.4,13.7.5,12.1.11,12.3.11,13.1.11,13.7.11"
CASES="1.*,2.*,3.*,4.*,5.*,6.*,7.*,9.*,10.*,$DEFLATE_CASES"
EXCLUDE=""
TIMEOUT=900
WS_MAX_SIZE=$((32 * 1024 * 1024)) # 9.* sends messages of up to 16 MiB

usage() {
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
    echo "options: --server rsasgi|uvicorn  --cases LIST  --exclude LIST  --timeout SECONDS"
}

while [ $# -gt 0 ]; do
    case "$1" in
        --server) SERVER=$2; shift 2 ;;
        --cases) CASES=$2; shift 2 ;;
        --exclude) EXCLUDE=$2; shift 2 ;;
        --timeout) TIMEOUT=$2; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
done

log() { echo "== $*"; }
die() { echo "autobahn: $*" >&2; exit 3; }

[ -x "$PY3" ] || die "no Python 3 venv at $VENV (set VENV=/path/to/venv with rsasgi installed)"
command -v timeout >/dev/null || die "timeout (coreutils) is needed"

# ---------------------------------------------------------------- Python 2.7 + autobahntestsuite

is_py27() {
    "$1" -c 'import sys; sys.exit(sys.version_info[:2] != (2, 7))' >/dev/null 2>&1
}

find_py27() {
    # pyenv's shims exist on PATH even when 2.7 is not the selected version, so each candidate
    # is run to check that it really is a Python 2.7.
    local candidates=()
    if [ -n "${PY27:-}" ]; then candidates+=("$PY27"); fi
    if command -v python2.7 >/dev/null; then candidates+=("$(command -v python2.7)"); fi
    local root
    for root in "$(pyenv root 2>/dev/null || true)" "${PYENV_ROOT:-$HOME/.pyenv}" /root/.pyenv; do
        [ -n "$root" ] && candidates+=("$root"/versions/2.7*/bin/python2.7)
    done
    local candidate
    for candidate in "${candidates[@]}"; do
        if [ -x "$candidate" ] && is_py27 "$candidate"; then
            echo "$candidate"
            return
        fi
    done
    return 1
}

REQS=$HERE/requirements-py27.txt
STAMP=$AB_VENV/.requirements-py27.txt
if [ ! -x "$AB_VENV/bin/wstest" ] || ! cmp -s "$REQS" "$STAMP"; then
    PY27_BIN=$(find_py27) || die "Python 2.7 not found (set PY27=/path/to/python2.7)"
    log "creating the Python 2.7 virtualenv $AB_VENV with $PY27_BIN"
    rm -rf "$AB_VENV" "$BOOT"
    mkdir -p "$BOOT"
    # virtualenv 20.15 is the last that runs on (and creates) Python 2.7; installed into a
    # private directory so the Python 2.7 installation itself is left untouched.
    timeout 600 "$PY27_BIN" -m pip install -q --disable-pip-version-check --no-warn-script-location \
        --target "$BOOT" 'virtualenv==20.15.1' 2>&1 | grep -v DEPRECATION || true
    PYTHONPATH=$BOOT timeout 300 "$PY27_BIN" -m virtualenv -q "$AB_VENV" \
        || die "could not create the Python 2.7 virtualenv"
    log "installing autobahntestsuite (pins: tests/autobahn/requirements-py27.txt)"
    timeout 900 "$AB_VENV/bin/pip" install -q --disable-pip-version-check -r "$REQS" 2>&1 \
        | grep -v DEPRECATION || true
    [ -x "$AB_VENV/bin/wstest" ] || die "autobahntestsuite did not install (see pip's output above)"
    cp "$REQS" "$STAMP"
fi
export PYTHONWARNINGS=ignore # cryptography's "Python 2 is no longer supported" on every start
"$AB_VENV/bin/wstest" -a 2>/dev/null | sed 's/^/   /'

# ---------------------------------------------------------------- the server under test

rm -rf "$WORK"
mkdir -p "$WORK"
SERVER_LOG=$WORK/server.log
# Created here, not only by the server's redirection: that happens in the forked child, and the
# loop below may read the log before the child has opened it (sed then fails, and set -e exits).
: >"$SERVER_LOG"
SERVER_PID=
cleanup() {
    if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        for _ in $(seq 50); do
            kill -0 "$SERVER_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$SERVER_PID" 2>/dev/null || true
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
    "$PY3" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

case "$SERVER" in
    rsasgi)
        "$PY3" -c 'import rsasgi' 2>/dev/null || die "rsasgi is not installed in $VENV"
        "$PY3" -m rsasgi echo_app:app --app-dir "$HERE" --host 127.0.0.1 --port 0 \
            --ws-max-size "$WS_MAX_SIZE" >"$SERVER_LOG" 2>&1 &
        SERVER_PID=$!
        PORT=
        for _ in $(seq 300); do
            PORT=$(sed -n 's/.*Listening on http:\/\/127\.0\.0\.1:\([0-9]*\).*/\1/p' "$SERVER_LOG" | head -1)
            [ -n "$PORT" ] && break
            kill -0 "$SERVER_PID" 2>/dev/null || break
            sleep 0.1
        done
        ;;
    uvicorn)
        PORT=$(free_port)
        "$PY3" -m uvicorn echo_app:app --app-dir "$HERE" --host 127.0.0.1 --port "$PORT" \
            --ws websockets --ws-max-size "$WS_MAX_SIZE" >"$SERVER_LOG" 2>&1 &
        SERVER_PID=$!
        ;;
    *) die "unknown server $SERVER (rsasgi or uvicorn)" ;;
esac

up=
if [ -n "${PORT:-}" ]; then
    for _ in $(seq 300); do
        kill -0 "$SERVER_PID" 2>/dev/null || break
        if "$PY3" -c 'import socket, sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), 1)' \
            "$PORT" 2>/dev/null; then
            up=1
            break
        fi
        sleep 0.1
    done
fi
if [ -z "$up" ]; then
    cat "$SERVER_LOG" >&2
    die "$SERVER did not start listening"
fi
VERSION=$("$PY3" -c "import importlib.metadata as m; print(m.version('$SERVER'))" 2>/dev/null || echo '?')
log "$SERVER $VERSION serving echo_app:app on ws://127.0.0.1:$PORT (pid $SERVER_PID, log $SERVER_LOG)"

# ---------------------------------------------------------------- wstest

SPEC=$WORK/fuzzingclient.json
"$PY3" - "$HERE/fuzzingclient.json" "$SPEC" "$SERVER" "ws://127.0.0.1:$PORT" \
    "$WORK/reports/servers" "$CASES" "$EXCLUDE" <<'EOF'
import json, sys
template, out, agent, url, outdir, cases, exclude = sys.argv[1:]
spec = json.loads(open(template).read())
spec["outdir"] = outdir
spec["servers"][0].update(agent=agent, url=url)
spec["cases"] = [c for c in cases.split(",") if c]
spec["exclude-cases"] = [c for c in exclude.split(",") if c]
open(out, "w").write(json.dumps(spec, indent=2) + "\n")
EOF

log "wstest -m fuzzingclient, cases $CASES, excluding $EXCLUDE (timeout ${TIMEOUT}s)"
started=$(date +%s)
set +e
(cd "$WORK" && timeout --kill-after=10 "$TIMEOUT" "$AB_VENV/bin/wstest" -m fuzzingclient -s "$SPEC") \
    >"$WORK/wstest.log" 2>&1
wstest_status=$?
set -e
elapsed=$(($(date +%s) - started))
log "wstest finished in ${elapsed}s with exit status $wstest_status (log $WORK/wstest.log)"
if [ "$wstest_status" = 124 ] || [ "$wstest_status" = 137 ]; then
    tail -20 "$WORK/wstest.log" >&2
    die "wstest did not finish within ${TIMEOUT}s"
fi
if ! kill -0 "$SERVER_PID" 2>/dev/null; then
    echo "!! $SERVER exited during the run; its log ends with:" >&2
    tail -20 "$SERVER_LOG" >&2
fi

set +e
"$PY3" "$HERE/summary.py" "$WORK/reports/servers/index.json" --agent "$SERVER"
status=$?
set -e
[ "$wstest_status" = 0 ] || { tail -20 "$WORK/wstest.log" >&2; [ "$status" != 0 ] || status=1; }
echo "full report: $WORK/reports/servers/index.html"
exit "$status"
