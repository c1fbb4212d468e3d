#!/usr/bin/env bash
# Install the benchmark's peers into bench/.work/ (git-ignored). Idempotent: re-running
# only installs what is missing. Nothing here touches the project's own .venv.
#
#   bench/.work/venv   Python peers: picows, websockets, aiohttp, socketify, uvloop
#                      (+ bunws itself, editable, when its build succeeds)
#   bench/.work/node   Bun from npm (`npm install bun@$BUN_VERSION`, default 1.4.4), binary at
#                      bench/.work/node/node_modules/.bin/bun
#
# Usage: bash bench/setup.sh          (BENCH_SKIP_BUNWS=1 to skip installing bunws)
set -uo pipefail
cd "$(dirname "$0")"
BENCH="$(pwd)"
ROOT="$(cd .. && pwd)"
WORK="$BENCH/.work"
mkdir -p "$WORK"

PY="${PYTHON:-python3}"
VENV="$WORK/venv"
if [ ! -x "$VENV/bin/python" ]; then
    echo "[setup] creating $VENV"
    "$PY" -m venv "$VENV" || { echo "[setup] venv creation failed"; exit 1; }
fi
VPY="$VENV/bin/python"
"$VPY" -m pip install -q --upgrade pip >/dev/null 2>&1 || true

# Core peers: failure of any one is reported but does not stop the others.
for pkg in uvloop picows websockets aiohttp; do
    if "$VPY" -c "import $pkg" 2>/dev/null; then
        echo "[setup] $pkg: present ($("$VPY" -c "import importlib.metadata as m; print(m.version('$pkg'))"))"
    else
        echo "[setup] installing $pkg"
        "$VPY" -m pip install -q "$pkg" || echo "[setup] WARNING: $pkg failed to install"
    fi
done

# socketify ships prebuilt uWebSockets/libuv shared objects inside its wheel; it needs cffi.
if "$VPY" -c "import socketify" 2>/dev/null; then
    echo "[setup] socketify: present"
else
    echo "[setup] installing socketify"
    "$VPY" -m pip install -q socketify || echo "[setup] WARNING: socketify failed to install (the harness will skip it)"
fi

# bunws itself (editable, so the lead's latest source is measured). Optional: its build
# may be broken mid-development; the harness then skips the bunws targets with the reason.
if [ "${BENCH_SKIP_BUNWS:-0}" != "1" ] && [ -f "$ROOT/setup.py" ]; then
    echo "[setup] installing bunws (editable) into the bench venv"
    "$VPY" -m pip install -q -e "$ROOT" >"$WORK/bunws-install.log" 2>&1 \
        || echo "[setup] WARNING: bunws install failed (see $WORK/bunws-install.log)"
fi

# Bun from the npm registry (the package's postinstall picks the platform binary package).
NODE_DIR="$WORK/node"
BUN="$NODE_DIR/node_modules/.bin/bun"
BUN_VERSION="${BUN_VERSION:-1.4.4}"   # the Bun version docs/bun-behaviour.md was measured on
if [ -x "$BUN" ] && [ "$("$BUN" --version 2>/dev/null)" = "$BUN_VERSION" ]; then
    echo "[setup] bun: present ($("$BUN" --version))"
else
    if command -v npm >/dev/null 2>&1; then
        echo "[setup] installing bun via npm"
        mkdir -p "$NODE_DIR"
        [ -f "$NODE_DIR/package.json" ] || echo '{"name":"bunws-bench-peers","private":true}' > "$NODE_DIR/package.json"
        (cd "$NODE_DIR" && npm install --no-audit --no-fund --silent "bun@$BUN_VERSION") \
            || echo "[setup] WARNING: npm install bun failed"
        "$BUN" --version >/dev/null 2>&1 && echo "[setup] bun: $("$BUN" --version)" \
            || echo "[setup] WARNING: bun binary does not run (the harness will skip it)"
    else
        echo "[setup] WARNING: npm not found; Bun peer unavailable (apt-get install npm)"
    fi
fi

if ! command -v cc >/dev/null 2>&1; then
    echo "[setup] WARNING: no C compiler (cc); the load generator cannot be built (apt-get install gcc)"
fi
if ! command -v taskset >/dev/null 2>&1; then
    echo "[setup] WARNING: taskset missing (apt-get install util-linux); runs will be unpinned"
fi
echo "[setup] done"
