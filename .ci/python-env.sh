#!/usr/bin/env bash
# Create or refresh the git-ignored Python venv (.venv) that the Deep interop test uses.
#
#   bash .ci/python-env.sh
#
# Installs tests/interop/requirements.txt (Deep's Python agent and its pinned dependencies) into
# .venv. Idempotent: a stamp file records a hash of the requirements and the interpreter version,
# so a second run with nothing changed returns at once. Without python3 (or its venv module) on the
# machine it prints a notice and exits 0, and the interop tests report themselves skipped; with
# SONDE_REQUIRE_INTEROP=1 (as .ci/run sets it) that is an error instead (exit 1). A failing pip
# install is always an error.
# Environment: PYTHON (interpreter to build the venv from, default python3), SONDE_REQUIRE_INTEROP.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
req="$root/tests/interop/requirements.txt"
stamp="$venv/.sonde-requirements.stamp"
python="${PYTHON:-python3}"

# No venv: a notice (and the interop tests skip), or an error where the interop tests are required.
give_up() {
    if [ "${SONDE_REQUIRE_INTEROP:-}" = 1 ]; then
        echo "python-env: $1; SONDE_REQUIRE_INTEROP=1, so this is an error" >&2
        exit 1
    fi
    echo "python-env: $1; skipping the Python venv (the Deep interop tests will be skipped)"
    exit 0
}

if ! command -v "$python" >/dev/null 2>&1; then
    give_up "'$python' not found"
fi

want="$({ "$python" -c 'import sys; print(sys.version)'; cat "$req"; } | sha256sum | cut -d' ' -f1)"

if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] \
    && "$venv/bin/python" -c 'import deep, grpc' >/dev/null 2>&1; then
    echo "python-env: .venv is up to date"
    exit 0
fi

# A venv whose interpreter no longer runs (e.g. the base Python went away) is rebuilt.
if [ -e "$venv" ] && ! "$venv/bin/python" -c 'pass' >/dev/null 2>&1; then
    echo "python-env: .venv is broken; recreating it"
    rm -rf "$venv"
fi

if [ ! -x "$venv/bin/python" ]; then
    if ! "$python" -m venv "$venv"; then
        rm -rf "$venv"
        give_up "'$python -m venv' failed (is the venv module installed? on Debian: apt-get install python3-venv)"
    fi
fi

echo "python-env: installing $(basename "$req") into .venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input -r "$req"
echo "$want" >"$stamp"
echo "python-env: .venv ready ($("$venv/bin/python" -c 'import importlib.metadata as m; print("deep-agent", m.version("deep-agent"))'))"
