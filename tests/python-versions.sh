#!/usr/bin/env bash
# Builds rsasgi for each CPython version it supports and runs a representative part of the
# end-to-end suite on each: the ASGI scope, WSGI, WebSocket and lifespan test files.
#
#   bash tests/python-versions.sh              # 3.10, 3.11, 3.12 and 3.13
#   bash tests/python-versions.sh 3.10 3.13    # some of them
#
# Interpreters come from pyenv ($PYENV_ROOT, default /root/.pyenv): the newest 3.X.Y under
# $PYENV_ROOT/versions. A version that is not there is an error, never a skip. Each version
# gets a virtualenv, .venv-pyXY, with tests/requirements.txt and a wheel of rsasgi built by pip
# from this tree for that interpreter.
#
# One wheel per version, not one abi3 wheel: abi3 costs about 3% more instructions per ASGI
# request (README.md, "Platforms and Python versions"). The builds share one cargo target
# directory, target/pyversions (or $PYVERSIONS_TARGET), apart from target/ so the main build
# stays warm: the dependencies compile once, and each version recompiles only pyo3 and rsasgi
# (about a minute, where a cold target directory per version would take two and a half). While
# one version's tests run, the next version's wheel builds; the tests mostly wait on sockets. The
# wheels are built without fat LTO and with parallel codegen (see build_wheel): they test
# compatibility, not speed, and the release profile doubled this script's time (914 s against
# 440 s for the four versions on the 2-core CI machine, cold target directory).
#
# Exit status: 0 when every version built and passed, 1 otherwise (the summary names them),
# 2 for a bad command line or a missing interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."

PYENV_ROOT=${PYENV_ROOT:-/root/.pyenv}
# tests/run-all.sh passes target, where its own build (with the same settings as build_wheel)
# left the dependencies compiled.
TARGET=${PYVERSIONS_TARGET:-target/pyversions}
# ASGI is covered by test_scope.py rather than test_http_protocol.py: the scope is built from
# Python objects on every request, while HTTP/1.1 framing is hyper's and the same on every Python.
TESTS=(tests/test_scope.py tests/test_wsgi.py tests/test_websocket.py tests/test_lifespan.py)

if [ $# -gt 0 ]; then
    VERSIONS=("$@")
else
    VERSIONS=(3.10 3.11 3.12 3.13)
fi

log() { echo "== $*"; }

# The newest pyenv CPython X.Y.Z for X.Y, or nothing (free-threaded and -dev builds are left out).
find_python() {
    local version=$1 dir
    dir=$(find "$PYENV_ROOT/versions" -mindepth 1 -maxdepth 1 -name "$version.*" -printf '%f\n' \
        2>/dev/null | grep -E "^${version//./\\.}\.[0-9]+$" | sort -V | tail -n 1)
    if [ -n "$dir" ] && [ -x "$PYENV_ROOT/versions/$dir/bin/python" ]; then
        echo "$PYENV_ROOT/versions/$dir/bin/python"
    fi
}

declare -A PYTHON
missing=()
for version in "${VERSIONS[@]}"; do
    if ! [[ $version =~ ^3\.[0-9]+$ ]]; then
        echo "python-versions: '$version' is not a CPython version like 3.12" >&2
        exit 2
    fi
    PYTHON[$version]=$(find_python "$version")
    [ -n "${PYTHON[$version]}" ] || missing+=("$version")
done
if [ ${#missing[@]} -gt 0 ]; then
    for version in "${missing[@]}"; do
        echo "python-versions: CPython $version not found in $PYENV_ROOT/versions" \
            "(install it with: pyenv install $version)" >&2
    done
    exit 2
fi

venv_of() { echo ".venv-py${1//./}"; }

# Creates (or re-creates, when it runs another interpreter) the version's virtualenv and
# installs the test requirements into it.
prepare_venv() {
    local version=$1 venv
    venv=$(venv_of "$version")
    if ! "$venv/bin/python" 2>/dev/null -c \
        "import sys; sys.exit('%d.%d' % sys.version_info[:2] != '$version')"; then
        "${PYTHON[$version]}" -m venv --clear "$venv"
        "$venv/bin/python" -m pip install -q --upgrade pip
    fi
    "$venv/bin/python" -m pip install -q -r tests/requirements.txt
}

# Builds the version's wheel into $TARGET/wheels/pyXY and writes how long that took to
# pyXY.seconds next to it; the build's output goes to pyXY.log, shown when the build fails.
build_wheel() {
    local version=$1 venv out start=$SECONDS
    venv=$(venv_of "$version")
    out=$TARGET/wheels/py${version//./}
    rm -rf "$out"
    mkdir -p "$out"
    # These builds check compatibility, not speed: without fat LTO and with parallel codegen.
    if CARGO_TARGET_DIR=$TARGET CARGO_PROFILE_RELEASE_LTO=off CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 \
        CARGO_PROFILE_RELEASE_DEBUG=0 \
        "$venv/bin/python" -m pip wheel -q --no-deps --wheel-dir "$out" . >"$out.log" 2>&1; then
        echo $((SECONDS - start)) >"$out.seconds"
        return 0
    fi
    tail -n 40 "$out.log" >&2
    return 1
}

# Installs the version's wheel into its virtualenv and runs the tests there.
run_tests() {
    local version=$1 venv
    venv=$(venv_of "$version")
    "$venv/bin/python" -m pip install -q --force-reinstall --no-deps \
        "$TARGET/wheels/py${version//./}"/rsasgi-*.whl || return 1
    "$venv/bin/python" -c \
        "import os, rsasgi._rsasgi as m; print('   ', os.path.basename(m.__file__))" || return 1
    "$venv/bin/python" -m pytest -q -p no:cacheprovider -n "${PYTEST_PROCESSES:-2}" "${TESTS[@]}"
}

started=$SECONDS
mkdir -p "$TARGET"
for version in "${VERSIONS[@]}"; do
    log "CPython $version: virtualenv $(venv_of "$version") (${PYTHON[$version]})"
    prepare_venv "$version"
done

failed=()
log "CPython ${VERSIONS[0]}: building rsasgi"
build_wheel "${VERSIONS[0]}" && built=0 || built=1
for i in "${!VERSIONS[@]}"; do
    version=${VERSIONS[$i]}
    next=${VERSIONS[$((i + 1))]:-}
    next_pid=
    if [ -n "$next" ]; then
        log "CPython $next: building rsasgi in the background"
        build_wheel "$next" &
        next_pid=$!
    fi

    if [ "$built" = 1 ]; then
        failed+=("$version (build)")
    else
        log "CPython $version: rsasgi built in $(cat "$TARGET/wheels/py${version//./}.seconds")s;" \
            "running ${TESTS[*]}"
        tests_start=$SECONDS
        if run_tests "$version"; then
            log "CPython $version: passed in $((SECONDS - tests_start))s"
        else
            failed+=("$version (tests)")
        fi
    fi

    if [ -n "$next_pid" ]; then
        wait "$next_pid" && built=0 || built=1
    fi
done

log "CPython ${VERSIONS[*]}: done in $((SECONDS - started))s"
if [ ${#failed[@]} -gt 0 ]; then
    echo "python-versions: failed on CPython ${failed[*]}" >&2
    exit 1
fi
