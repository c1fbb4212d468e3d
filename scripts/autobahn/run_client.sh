#!/usr/bin/env bash
# Run the Autobahn|Testsuite fuzzing server on loopback against the bunws client
# (scripts/autobahn/client_echo.py) and print the per-category summary.
#
#   scripts/autobahn/run_client.sh [--quick] [--cases JSON] [--out DIR] [--markdown] [--uvloop]
#
# Environment: WSTEST / AUTOBAHN_PREFIX (as run.sh), PYTHON (default python3),
# AB_TIMEOUT (seconds for the whole run, default 3600; 900 with --quick).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
PREFIX="${AUTOBAHN_PREFIX:-/tmp/autobahn27}"
WSTEST="${WSTEST:-$PREFIX/wstest}"
PYTHON="${PYTHON:-python3}"

cases='["*"]'; out=""; quick=0; summary_args=(--details); client_args=()
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) quick=1; cases='["1.*","2.*","3.*","4.*","5.*","6.*","7.*"]'; shift ;;
        --cases) cases="$2"; shift 2 ;;
        --out) out="$2"; shift 2 ;;
        --markdown) summary_args+=(--markdown); shift ;;
        --uvloop) client_args+=(--uvloop); shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
if [ ! -x "$WSTEST" ]; then
    echo "wstest not found at $WSTEST; run scripts/autobahn/install.sh first" >&2; exit 2
fi

suffix=""; [ "$quick" = 1 ] && suffix="-quick"
out="${out:-/tmp/bunws-autobahn/client$suffix}"
mkdir -p "$out"; out="$(cd "$out" && pwd)"
rm -f "$out/index.json"
port=$("$PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$PYTHON" - "$out/fuzzingserver.json" "$out" "$port" "$cases" <<'PY'
import json, sys
spec, out, port, cases = sys.argv[1:]
json.dump({"url": f"ws://127.0.0.1:{port}", "outdir": out, "cases": json.loads(cases),
           "exclude-cases": [], "exclude-agent-cases": {}}, open(spec, "w"), indent=2)
PY

server_pid=""
cleanup() {
    if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
        kill "$server_pid" 2>/dev/null || true
    fi
}
trap cleanup EXIT INT TERM
( cd "$out" && exec "$WSTEST" -m fuzzingserver --webport 0 -s "$out/fuzzingserver.json" ) >"$out/wstest.log" 2>&1 &
server_pid=$!
deadline=$(( $(date +%s) + 30 ))
until "$PYTHON" -c 'import socket,sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), 0.5).close()' "$port" 2>/dev/null; do
    if [ "$(date +%s)" -ge "$deadline" ] || ! kill -0 "$server_pid" 2>/dev/null; then
        echo "wstest fuzzingserver did not listen; its log:" >&2; cat "$out/wstest.log" >&2; exit 2
    fi
    sleep 0.2
done
default_timeout=3600; [ "$quick" = 1 ] && default_timeout=900
start=$(date +%s)
rc=0
PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" timeout "${AB_TIMEOUT:-$default_timeout}" \
    "$PYTHON" "$HERE/client_echo.py" "ws://127.0.0.1:$port" "${client_args[@]}" || rc=$?
echo "client finished in $(( $(date +%s) - start ))s (exit $rc); report: $out/index.html" >&2
if [ ! -s "$out/index.json" ]; then
    echo "no report written; last lines of the wstest log:" >&2; tail -20 "$out/wstest.log" >&2; exit 3
fi
"$PYTHON" "$HERE/summarize.py" "$out" "${summary_args[@]}"
