#!/usr/bin/env bash
# Prepare everything `make demo` / `make test` need, idempotently:
#   1. find a Python 3.10 interpreter (OpenFHE 1.6.1 wheels ship only a CPython 3.10 extension);
#   2. create .venv with it (or recreate it if it is not 3.10);
#   3. pip install -e '.[dev]' into it, only when pyproject.toml changed since the last install;
#   4. make sure the mosquitto broker binary exists (apt-get when root; a warning otherwise).
# A second run does no installing and takes about a second.
#
# Environment: PYTHON=/path/to/python3.10 picks the interpreter; VENV=dir picks the venv (.venv).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV="${VENV:-.venv}"

say() { printf 'setup: %s\n' "$*"; }
die() { printf 'setup: ERROR: %s\n' "$*" >&2; exit 1; }

# ------------------------------------------------------------------ 1. Python 3.10
# Prints the interpreter's real path if it runs and is CPython 3.10 (a pyenv shim for a
# version that is not selected exits non-zero, and is skipped).
probe() {
    "$1" -c 'import sys; assert sys.version_info[:2] == (3, 10); print(sys.executable)' 2>/dev/null
}

find_python() {
    local cand real
    if [[ -n "${PYTHON:-}" ]]; then
        if ! command -v "$PYTHON" >/dev/null 2>&1; then
            die "PYTHON=$PYTHON: no such interpreter."
        fi
        if real="$(probe "$PYTHON")" && [[ -n "$real" ]]; then
            echo "$real"; return 0
        fi
        local ver
        ver="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || echo unknown)"
        die "PYTHON=$PYTHON is Python $ver, but threshold-fl needs Python 3.10 (OpenFHE 1.6.1 wheels contain only a CPython 3.10 extension)."
    fi
    local -a cands=()
    command -v python3.10 >/dev/null 2>&1 && cands+=("$(command -v python3.10)")
    # Newest 3.10.x first.
    local roots=("${PYENV_ROOT:-}" /root/.pyenv "$HOME/.pyenv")
    local r
    for r in "${roots[@]}"; do
        [[ -n "$r" && -d "$r/versions" ]] || continue
        while IFS= read -r cand; do
            cands+=("$cand")
        done < <(compgen -G "$r/versions/3.10.*/bin/python" | sort -V -r)
    done
    cands+=(/usr/bin/python3.10 /usr/local/bin/python3.10)
    for cand in "${cands[@]}"; do
        [[ -x "$cand" ]] || continue
        if real="$(probe "$cand")" && [[ -n "$real" ]]; then
            echo "$real"; return 0
        fi
    done
    cat >&2 <<'EOF'
setup: ERROR: no Python 3.10 found.
  threshold-fl needs Python 3.10: OpenFHE 1.6.1 (openfhe==1.6.1.0.22.4) ships only a
  CPython 3.10 extension. Looked at: $PYTHON, python3.10 on PATH,
  ~/.pyenv/versions/3.10.*/bin/python, /usr/bin/python3.10, /usr/local/bin/python3.10.
  Debian 12 has no python3.10 package (apt-get install python3.10 will not work). Either
    - install it with pyenv:  pyenv install 3.10   (https://github.com/pyenv/pyenv), or
    - point to one you have:  make test PYTHON=/path/to/python3.10
EOF
    exit 1
}

# ------------------------------------------------------------------ 2. the venv
venv_ok() { [[ -x "$VENV/bin/python" ]] && probe "$VENV/bin/python" >/dev/null; }

if venv_ok; then
    :  # Reuse it, whatever interpreter made it.
else
    PY="$(find_python)"
    say "using Python 3.10 at $PY"
    if [[ -e "$VENV" ]]; then
        say "$VENV exists but is not a working Python 3.10 venv; recreating it"
        rm -rf "$VENV"
    fi
    say "creating virtual environment $VENV"
    "$PY" -m venv "$VENV" || die "'$PY -m venv $VENV' failed (is the venv/ensurepip module installed?)"
fi

# ------------------------------------------------------------------ 3. the project
pyproject_hash="$(sha256sum pyproject.toml | cut -c1-16)"
stamp="$VENV/.installed-$pyproject_hash"
# The stamp says "pip install -e '.[dev]' succeeded for this pyproject.toml"; also make sure
# the key modules are still there (cheap: find_spec imports nothing).
deps_present() {
    "$VENV/bin/python" - <<'EOF' 2>/dev/null
import importlib.util, sys
mods = ("openfhe", "torch", "numpy", "cryptography", "aiomqtt", "msgpack",
        "pytest", "pytest_asyncio", "hypothesis", "mypy", "ruff")
sys.exit(0 if all(importlib.util.find_spec(m) for m in mods) else 1)
EOF
}

if [[ -f "$stamp" ]] && deps_present; then
    say "$VENV is up to date (Python 3.10, pyproject.toml unchanged since the last install)"
else
    if deps_present; then
        say "installing project into $VENV (dependencies already present: seconds)"
    else
        say "installing project into $VENV (first run: about 2 minutes, ~5 GB for torch)"
    fi
    # -q keeps pip quiet but still shows errors. The pip config on some of our machines names
    # file:///opt/pypi indexes lacking most projects; the resulting warnings are harmless and
    # filtered out (pip's exit status is kept).
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e '.[dev]' \
        2> >(grep -v "is ignored: it is neither a file nor a directory" >&2) \
        || die "pip install -e '.[dev]' failed (see pip's messages above)."
    rm -f "$VENV"/.installed-*
    touch "$stamp"
    say "installed"
fi

# ------------------------------------------------------------------ 4. mosquitto
have_mosquitto() { command -v mosquitto >/dev/null 2>&1 || [[ -x /usr/sbin/mosquitto ]]; }

if ! have_mosquitto; then
    if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
        say "installing the mosquitto MQTT broker with apt-get (not started as a service)"
        export DEBIAN_FRONTEND=noninteractive
        # Keep the package's maintainer scripts from starting a system broker: tests start
        # their own on free ports. policy-rc.d exit 101 = "action forbidden" for invoke-rc.d.
        policy=/usr/sbin/policy-rc.d
        if [[ ! -e "$policy" ]]; then
            trap 'rm -f /usr/sbin/policy-rc.d' EXIT  # removed again however we leave
            printf '#!/bin/sh\nexit 101\n' >"$policy"
            chmod 755 "$policy"
        fi
        apt_install() { apt-get install -y -q --no-install-recommends mosquitto >/dev/null; }
        ok=""
        if apt_install 2>/dev/null; then
            ok=1
        elif apt-get update -q >/dev/null && apt_install; then
            ok=1
        fi
        [[ -n "$ok" ]] || die "apt-get install mosquitto failed; install the mosquitto broker by hand."
        have_mosquitto || die "mosquitto installed but not found on PATH or at /usr/sbin/mosquitto."
    else
        printf '%s\n' \
            "setup: WARNING: the mosquitto MQTT broker is not installed and this is not root," \
            "setup:          so it was not installed. Tests of the MQTT transport need it" \
            "setup:          (they will say so): sudo apt-get install mosquitto" >&2
    fi
fi
