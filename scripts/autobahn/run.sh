#!/usr/bin/env bash
# Run the Autobahn|Testsuite fuzzing client against a WebSocket echo server on
# loopback and print the per-category summary (exit status from summarize.py).
#
#   scripts/autobahn/run.sh [options] [ws://127.0.0.1:PORT/PATH | SERVER_COMMAND...]
#
# With no target it starts bunws's echo server, `$PYTHON bench/servers/bunws_server.py`,
# with PORT set to a free port and DEFLATE=dedicated (so 12.*/13.* exercise every
# permessage-deflate parameter; DEFLATE=shared is Bun's shared mode, which like Bun
# declines server_max_window_bits below 15, so 13.3.*/13.5.* end UNIMPLEMENTED),
# and tests ws://127.0.0.1:PORT/echo. A SERVER_COMMAND is started the same way (it must
# read PORT from the environment and serve the path given by --path). A ws:// URL is
# tested as is (the server must already run; loopback only).
#
# Options:
#   --quick          cases 1.* to 7.* only (~300 cases, about a minute)
#   --cases JSON     case patterns, e.g. '["1.*","12.1.*"]'   (default '["*"]')
#   --exclude JSON   excluded patterns                        (default '[]')
#   --out DIR        report directory  (default /tmp/bunws-autobahn/AGENT[-quick])
#   --agent NAME     name in the report (default bunws, bunws-$DEFLATE when DEFLATE is
#                    not dedicated, or "server" for a URL or a SERVER_COMMAND)
#   --path PATH      URL path for a started server (default /echo)
#   --markdown       summary as markdown tables
#   --no-details     do not list the suite's text for each problem case
#   -h, --help
# Environment:
#   WSTEST       wstest wrapper (default $AUTOBAHN_PREFIX/wstest, from install.sh)
#   AUTOBAHN_PREFIX  default /tmp/autobahn27
#   PYTHON       interpreter for the default server (default: python3 on PATH)
#   DEFLATE      passed to a started server: dedicated (default), shared (or 1), 0 (off)
#   AB_TIMEOUT   seconds for the whole wstest run (default 3600; 900 with --quick)
#   AB_STARTUP   seconds to wait for a started server to listen (default 30)
#   AB_SUMMARY_ARGS  extra arguments for summarize.py (e.g. --strict-close)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
PREFIX="${AUTOBAHN_PREFIX:-/tmp/autobahn27}"
WSTEST="${WSTEST:-$PREFIX/wstest}"
PYTHON="${PYTHON:-python3}"

cases='["*"]'; exclude='[]'; out=""; agent=""; path="/echo"; quick=0
summary_args=(); details=1
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) quick=1; cases='["1.*","2.*","3.*","4.*","5.*","6.*","7.*"]'; shift ;;
        --cases) cases="$2"; shift 2 ;;
        --exclude) exclude="$2"; shift 2 ;;
        --out) out="$2"; shift 2 ;;
        --agent) agent="$2"; shift 2 ;;
        --path) path="$2"; shift 2 ;;
        --markdown) summary_args+=(--markdown); shift ;;
        --no-details) details=0; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        --) shift; break ;;
        -*) echo "unknown option $1" >&2; exit 2 ;;
        *) break ;;
    esac
done

if [ ! -x "$WSTEST" ]; then
    echo "wstest not found at $WSTEST; run scripts/autobahn/install.sh first" >&2
    exit 2
fi

server_pid=""
cleanup() {
    if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
        kill "$server_pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$server_pid" 2>/dev/null || true
    fi
}
trap cleanup EXIT INT TERM

if [ $# -eq 1 ] && [[ "$1" == ws://* ]]; then
    url="$1"
    case "$url" in
        ws://127.0.0.1:*|ws://localhost:*|ws://\[::1\]:*) ;;
        *) echo "only loopback URLs (127.0.0.1, localhost, [::1]) are allowed: $url" >&2; exit 2 ;;
    esac
    agent="${agent:-server}"
else
    if [ $# -eq 0 ]; then
        set -- "$PYTHON" "$REPO/bench/servers/bunws_server.py"
        # One agent name (and report directory) per compression mode.
        mode="${DEFLATE:-dedicated}"
        if [ "$mode" = dedicated ]; then agent="${agent:-bunws}"; else agent="${agent:-bunws-$mode}"; fi
        if [ ! -f "$REPO/bench/servers/bunws_server.py" ]; then
            echo "bench/servers/bunws_server.py does not exist yet" >&2; exit 2
        fi
    fi
    agent="${agent:-server}"
    port=$("$PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    url="ws://127.0.0.1:$port$path"
    mkdir -p "${TMPDIR:-/tmp}"
    server_log="$(mktemp "${TMPDIR:-/tmp}/autobahn-server.XXXXXX.log")"
    echo "starting server: PORT=$port DEFLATE=${DEFLATE:-dedicated} $*  (log: $server_log)" >&2
    PORT="$port" DEFLATE="${DEFLATE:-dedicated}" HOST=127.0.0.1 "$@" >"$server_log" 2>&1 &
    server_pid=$!
    deadline=$(( $(date +%s) + ${AB_STARTUP:-30} ))
    until "$PYTHON" -c 'import socket,sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), 0.5).close()' "$port" 2>/dev/null; do
        if ! kill -0 "$server_pid" 2>/dev/null; then
            echo "server exited before listening; its log:" >&2; cat "$server_log" >&2; exit 2
        fi
        if [ "$(date +%s)" -ge "$deadline" ]; then
            echo "server did not listen on 127.0.0.1:$port in ${AB_STARTUP:-30}s" >&2; exit 2
        fi
        sleep 0.2
    done
fi

suffix=""; [ "$quick" = 1 ] && suffix="-quick"
out="${out:-/tmp/bunws-autobahn/$agent$suffix}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
rm -f "$out/index.json"
spec="$out/fuzzingclient.json"
"$PYTHON" - "$spec" "$out" "$agent" "$url" "$cases" "$exclude" <<'PY'
import json, sys
spec, out, agent, url, cases, exclude = sys.argv[1:]
json.dump({
    "outdir": out,
    "servers": [{"agent": agent, "url": url}],
    "cases": json.loads(cases),
    "exclude-cases": json.loads(exclude),
    "exclude-agent-cases": {},
}, open(spec, "w"), indent=2)
PY

default_timeout=3600; [ "$quick" = 1 ] && default_timeout=900
echo "wstest fuzzingclient -> $url  cases=$cases exclude=$exclude  report=$out" >&2
start=$(date +%s)
rc=0
( cd "$out" && timeout "${AB_TIMEOUT:-$default_timeout}" "$WSTEST" -m fuzzingclient -s "$spec" ) \
    >"$out/wstest.log" 2>&1 || rc=$?
echo "wstest finished in $(( $(date +%s) - start ))s (exit $rc); log: $out/wstest.log; HTML: $out/index.html" >&2
if [ ! -s "$out/index.json" ]; then
    echo "no report written (wstest exit $rc); last lines of its log:" >&2
    tail -20 "$out/wstest.log" >&2
    exit 3
fi
[ "$details" = 1 ] && summary_args+=(--details)
# shellcheck disable=SC2086
"$PYTHON" "$HERE/summarize.py" "$out" "${summary_args[@]}" ${AB_SUMMARY_ARGS:-}
