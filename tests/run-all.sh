#!/usr/bin/env bash
# Installs everything the tests need into .venv and runs every test:
# lint (cargo fmt, clippy, rustdoc, ruff), Rust unit tests, and the end-to-end suite
# against a release build of rsasgi installed with pip; then a representative
# part of the suite on each supported CPython (tests/python-versions.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}

# Each stage's header says how long the run has taken so far, so a CI log shows where the time went.
stage() { echo "== $* (at $((SECONDS / 60))m$((SECONDS % 60))s)"; }

# The browser test drives Debian's Chromium; install it when we may.
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "== installing chromium for the browser test"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
# The HTTP/2 load test drives h2load, from Debian's nghttp2-client.
if ! command -v h2load >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "== installing nghttp2-client (h2load) for the HTTP/2 load test"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nghttp2-client >/dev/null
fi
# The socket-activation tests run rsasgi under systemd-socket-activate.
if ! command -v systemd-socket-activate >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "== installing systemd (systemd-socket-activate) for the socket-activation tests"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq systemd >/dev/null
fi
# The nginx tests run Debian's nginx in front of rsasgi (package `nginx`, in bookworm and
# later; the tests start their own nginx on ephemeral ports). The package would also start the
# system's nginx on port 80 unless a policy-rc.d forbids it, as containers' usually does; where
# none is there, one is for the install.
if ! command -v nginx >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "== installing nginx for the reverse-proxy tests"
    policy=/usr/sbin/policy-rc.d
    if [ -e "$policy" ]; then policy=; else printf '#!/bin/sh\nexit 101\n' >"$policy"; chmod 755 "$policy"; fi
    status=0
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx >/dev/null; } || status=$?
    if [ -n "$policy" ]; then rm -f "$policy"; fi
    [ "$status" = 0 ]
fi
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -r tests/requirements.txt
# The tests check behaviour, not speed (benches/ measures that), so this build skips the release
# profile's fat LTO, single codegen unit and line tables: same code and optimisation level, a few
# minutes less on a 2-core machine. `pip install .` and wheels keep the full release profile. The
# Rust unit tests and the version matrix below build with the same settings in the same target
# directory, so most dependencies compile once for all three (the unit tests' tokio has the
# test-util feature, so it and what depends on it compile again for them).
export CARGO_PROFILE_RELEASE_LTO=off CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 CARGO_PROFILE_RELEASE_DEBUG=0
stage "building and installing rsasgi (release profile, without fat LTO)"
.venv/bin/python -m pip install -q --force-reinstall --no-deps .

stage "lint"
cargo fmt --check
cargo clippy --all-targets --quiet -- -D warnings
# The code's own documentation: a link to something renamed or gone fails here.
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --document-private-items --quiet
.venv/bin/ruff check python tests examples benches scripts
.venv/bin/ruff format --check python tests examples benches scripts

# The unit tests' build (three to four minutes on two cores) runs in the background at idle
# priority (SCHED_IDLE) while the end-to-end and Autobahn tests below wait on their sockets: it
# takes only CPU time they leave unused, so they run as they would alone.
stage "Rust unit tests: building them in the background, at idle priority"
idle=(chrt --idle 0)
"${idle[@]}" true 2>/dev/null || idle=(nice -n 19)
unit_log=target/unit-tests-build.log
mkdir -p target
PYO3_PYTHON="$PWD/.venv/bin/python" "${idle[@]}" cargo test --release --no-run --quiet \
    >"$unit_log" 2>&1 &
unit_build=$!
trap 'kill "$unit_build" 2>/dev/null || true' EXIT

# Four processes (pytest-xdist) on two cores: most tests wait on sockets and timers (two
# processes kept the cores 42% busy), so four take 4.8 minutes where two took 7.9 and one about
# twice that, on a 2-core CI machine. The tests do not depend on each other: every server gets
# its own ephemeral port and temporary directory, and none asserts a wall-clock time.
# PYTEST_PROCESSES=0 runs them one at a time, in this process.
stage "end-to-end tests"
.venv/bin/python -m pytest -q -p no:cacheprovider -n "${PYTEST_PROCESSES:-4}" "$@"

stage "Autobahn|Testsuite (WebSocket conformance, cases 1-13, permessage-deflate included)"
VENV="$PWD/.venv" bash tests/autobahn/run.sh

stage "Rust unit tests"
if ! wait "$unit_build"; then
    cat "$unit_log" >&2
    echo "run-all: the Rust unit tests did not build (output above)" >&2
    exit 1
fi
trap - EXIT
PYO3_PYTHON="$PWD/.venv/bin/python" cargo test --release --quiet

# The whole suite above ran on .venv's interpreter: the other supported versions get the
# representative part (about a minute and a half per version saved by not repeating it).
main=$(.venv/bin/python -c 'import sys; print("%d.%d" % sys.version_info[:2])')
others=()
for version in 3.10 3.11 3.12 3.13; do
    [ "$version" = "$main" ] || others+=("$version")
done
stage "CPython ${others[*]} (ASGI scope, WSGI, WebSocket, lifespan on each; $main ran everything above)"
PYVERSIONS_TARGET=target bash tests/python-versions.sh "${others[@]}"
stage "done"
