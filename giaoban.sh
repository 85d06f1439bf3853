#!/usr/bin/env bash
# Giao Ban: the two commands a newcomer needs (see README.md).
#
#   ./giaoban.sh serve [args...]   install what is missing, then start a node
#                                  (default http://localhost:8080); args go to `giaoban serve`
#   ./giaoban.sh test  [args...]   install test needs too (redis-server, chromium),
#                                  then run `ruff check .` and `pytest -q`; args go to pytest
#
# Environment:
#   GIAOBAN_INSTALL_ONLY=1   install only: start no node, run no test
#   PYTHON=/path/to/python3  interpreter that creates .venv (default: python3; 3.11 or newer)
#
# Safe to run again and again: every step is skipped when already done (a few seconds).
# System packages come from Debian with apt-get (through sudo when not root).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$ROOT"

VENV="$ROOT/.venv"
PY="${PYTHON:-python3}"
APT_UPDATED=0

say() { printf '==> %s\n' "$*"; }
die() {
    printf '\ngiaoban.sh: error: %s\n' "$*" >&2
    exit 1
}

usage() {
    cat <<'EOF'
usage: ./giaoban.sh serve [giaoban serve args...]   install, then start a node on http://localhost:8080
       ./giaoban.sh test  [pytest args...]          install test needs, then ruff + pytest

GIAOBAN_INSTALL_ONLY=1 installs only; PYTHON=... picks the interpreter for .venv (3.11+).
EOF
}

# Is a command there, also in sbin directories that a normal user's PATH may lack?
have() { PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin" command -v "$1" >/dev/null 2>&1; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        die "root is needed to run: $*  (run as root or install sudo)"
    fi
}

# Run a noisy command with its output in a log; show the log's end only if it fails.
quietly() {
    local log
    log=$(mktemp "${TMPDIR:-/tmp}/giaoban-install.XXXXXX")
    if "$@" >"$log" 2>&1; then
        rm -f "$log"
    else
        local rc=$?
        tail -n 40 "$log" >&2
        die "'$*' failed (exit $rc); full output in $log"
    fi
}

apt_install() {
    [ "$#" -gt 0 ] || return 0
    have apt-get || die "missing system packages: $*
this script installs them with apt-get (Debian/Ubuntu); install them yourself and run it again"
    if [ "$APT_UPDATED" -eq 0 ]; then
        say "apt-get update"
        quietly as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
        APT_UPDATED=1
    fi
    say "installing system packages: $*"
    quietly as_root env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -q --no-install-recommends "$@"
}

python_ok() { # $1: interpreter; true if it runs and is 3.11+
    "$1" -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1
}

python_headers() { # $1: interpreter; true if its Python.h is there (to build C extensions)
    "$1" -c 'import os, sys, sysconfig
sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
        >/dev/null 2>&1
}

# .venv is usable: its python runs, is 3.11+, has pip, and belongs to this directory.
venv_ok() {
    [ -x "$VENV/bin/python" ] || return 1
    local prefix
    prefix=$("$VENV/bin/python" -c 'import sys, pip; print(sys.prefix)' 2>/dev/null) || return 1
    python_ok "$VENV/bin/python" && [ "$prefix" -ef "$VENV" ]
}

hash_of() { sha256sum "$@" | sha256sum | cut -d' ' -f1; }

# ---------------------------------------------------------------- system packages
install_system_packages() { # $1: serve | test
    local mode=$1
    local -a missing=()

    # Python: 3.11 or newer, with venv/ensurepip (Debian's python3-venv) to make .venv.
    if ! command -v "$PY" >/dev/null 2>&1; then
        [ -z "${PYTHON:-}" ] || die "PYTHON=$PYTHON: no such interpreter"
        missing+=(python3 python3-venv python3-dev)
    elif ! python_ok "$PY"; then
        die "Python 3.11 or newer is needed, but $PY is $("$PY" -V 2>&1).
Install a newer Python (Debian 12 has 3.11, Debian 13 has 3.13) or point PYTHON= at one."
    elif ! venv_ok && ! "$PY" -c 'import ensurepip, venv' >/dev/null 2>&1; then
        missing+=(python3-venv)
    fi

    # A C compiler and Python's headers build the forwarding loop in C (server/sfu/_fanout.c);
    # without them the node still works, on the slower Python loop.
    have gcc || missing+=(gcc)
    if command -v "$PY" >/dev/null 2>&1 && ! python_headers "$PY"; then
        missing+=(python3-dev)
    fi

    # Node.js and npm: the web client's socket.io-client comes from npm (web/package-lock.json).
    if ! have node; then
        missing+=(nodejs npm)
    elif ! have npm; then
        missing+=(npm)
    fi

    if [ "$mode" = test ]; then
        have redis-server || missing+=(redis-server)
        # Playwright drives Debian's Chromium (executable_path); it never downloads a browser.
        [ -x /usr/bin/chromium ] || missing+=(chromium)
        # The store tests start a throwaway PostgreSQL from Debian's binaries (unless
        # TEST_DATABASE_URL names a server).
        compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || missing+=(postgresql)
    fi

    apt_install "${missing[@]}"

    command -v "$PY" >/dev/null 2>&1 || die "$PY is still not there after installing python3"
    python_ok "$PY" || die "Python 3.11 or newer is needed, but $PY is $("$PY" -V 2>&1)."
}

# ---------------------------------------------------------------- Python packages
install_python_packages() { # $1: serve | test
    local mode=$1

    if [ -e "$VENV" ] && ! venv_ok; then
        say "recreating .venv (it is broken, too old, or was made elsewhere)"
        rm -rf "$VENV"
    fi
    if [ ! -e "$VENV" ]; then
        say "creating .venv with $("$PY" -V 2>&1)"
        quietly "$PY" -m venv "$VENV"
    fi

    # Reinstall only when pyproject.toml or the interpreter changed since the last install.
    local pyver stamp_serve stamp_test want_serve want_test
    pyver=$("$VENV/bin/python" -VV)
    # (and when the C sources changed: the install builds them)
    local sources
    sources=$(hash_of pyproject.toml server/sfu/_fanout.c server/sfu/_rtcp_reader.c)
    want_serve=$(printf '%s\nserve\n%s\n' "$pyver" "$sources" | sha256sum)
    want_test=$(printf '%s\ntest\n%s\n' "$pyver" "$sources" | sha256sum)
    stamp_serve="$VENV/.giaoban-serve.sha256"
    stamp_test="$VENV/.giaoban-test.sha256"

    local -a pip=("$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-input)
    if [ "$mode" = test ]; then
        if [ "$(cat "$stamp_test" 2>/dev/null)" != "$want_test" ] || [ ! -x "$VENV/bin/giaoban" ]; then
            say "installing Python packages with test needs (pip install -e '.[test]')"
            "${pip[@]}" -e '.[test]' || die "pip install -e '.[test]' failed (see above)"
            printf '%s\n' "$want_test" >"$stamp_test"
            printf '%s\n' "$want_serve" >"$stamp_serve"
        fi
    else
        if [ "$(cat "$stamp_serve" 2>/dev/null)" != "$want_serve" ] || [ ! -x "$VENV/bin/giaoban" ]; then
            say "installing Python packages (pip install -e .)"
            "${pip[@]}" -e . || die "pip install -e . failed (see above)"
            printf '%s\n' "$want_serve" >"$stamp_serve"
        fi
    fi
    "$VENV/bin/python" -c 'import server.sfu._fanout, server.sfu._rtcp_reader' >/dev/null 2>&1 ||
        say "warning: the forwarding loop and RTCP reader in C were not built (no C compiler or
    Python headers?): the node forwards media in Python, which costs more CPU per subscriber"
}

# ---------------------------------------------------------------- web packages
install_web_packages() {
    if [ ! -f web/package.json ]; then
        say "no web/package.json yet: skipping npm"
        return 0
    fi
    [ -f web/package-lock.json ] ||
        die "web/package-lock.json is missing: run 'npm install' in web/ and commit the lock file"
    local want stamp=web/node_modules/.giaoban-lock.sha256
    want=$(hash_of web/package.json web/package-lock.json)
    if [ ! -d web/node_modules ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
        say "installing web packages (npm ci in web/)"
        (cd web && npm ci --no-audit --no-fund --no-update-notifier --loglevel=error) ||
            die "npm ci in web/ failed (see above)"
        mkdir -p web/node_modules
        printf '%s\n' "$want" >"$stamp"
    fi
}

install_all() { # $1: serve | test
    install_system_packages "$1"
    install_python_packages "$1"
    install_web_packages
    export VIRTUAL_ENV="$VENV"
    export PATH="$VENV/bin:$PATH"
}

install_only() { [ "${GIAOBAN_INSTALL_ONLY:-}" = 1 ] || [ "${GIAOBAN_INSTALL_ONLY:-}" = true ]; }

# ---------------------------------------------------------------- commands
cmd_serve() {
    install_all serve
    if install_only; then
        say "installed (GIAOBAN_INSTALL_ONLY is set: not starting)"
        exit 0
    fi
    say "starting: giaoban serve $*"
    exec "$VENV/bin/giaoban" serve "$@"
}

cmd_test() {
    install_all test
    if install_only; then
        say "installed (GIAOBAN_INSTALL_ONLY is set: running no test)"
        exit 0
    fi
    say "ruff check ."
    local ruff_rc=0 pytest_rc=0
    "$VENV/bin/ruff" check . || ruff_rc=$?
    say "pytest -q $*"
    "$VENV/bin/python" -m pytest -q "$@" || pytest_rc=$?
    if [ "$ruff_rc" -ne 0 ]; then
        printf '\ngiaoban.sh: ruff check found problems (see above)\n' >&2
    fi
    if [ "$pytest_rc" -ne 0 ]; then
        exit "$pytest_rc"
    fi
    exit "$ruff_rc"
}

case "${1:-}" in
serve)
    shift
    cmd_serve "$@"
    ;;
test)
    shift
    cmd_test "$@"
    ;;
-h | --help | help)
    usage
    ;;
*)
    usage >&2
    exit 2
    ;;
esac
