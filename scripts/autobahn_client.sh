#!/usr/bin/env bash
# Autobahn|Testsuite fuzzingserver (wstest -m fuzzingserver) against the evws CLIENT.
#
#   scripts/autobahn_client.sh                 # groups 1-13, every case
#   scripts/autobahn_client.sh --quick         # skips 9.* and the bulk deflate cases 12.*.7-18, 13.*.7-18
#   scripts/autobahn_client.sh --cases '5.*,12.1.1'   # only these (comma-separated patterns)
#
# One command: installs wstest if needed (../shared/autobahn/install.sh, or
# $AUTOBAHN_DIR), starts the fuzzingserver on the first free loopback port of
# 9004-9007 (or $PORT), waits for it, runs examples/autobahn_client.py (asks
# /getCaseCount, echoes every case, then /updateReports), stops the server and
# summarises the report with summarize.py. Passing means every case OK,
# NON-STRICT or INFORMATIONAL, nothing missing, and every behaviorClose OK or
# INFORMATIONAL.
# Reports: $EVWS_TOOLS_HOME/autobahn/reports-client (default ~/.cache/evws-tools/...).
# Environment: PORT, CLIENT_TIMEOUT (s, default 1800, 600 with --quick), PYTHON3.
# Exit: 0 pass, 1 conformance failure, 2 harness/setup error.
set -u
cd "$(dirname "$0")/.."
ROOT=$(pwd)
AUTOBAHN_DIR=${AUTOBAHN_DIR:-../shared/autobahn}
AUTOBAHN_DIR=$(cd "$AUTOBAHN_DIR" && pwd) || exit 2
CACHE="${EVWS_TOOLS_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/evws-tools}/autobahn"
WSTEST="${WSTEST:-$CACHE/venv-wstest/bin/wstest}"
WSTEST_PY="$(dirname "$WSTEST")/python"
PYTHON3="${PYTHON3:-python3}"
AGENT=evws

usage() { sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

QUICK=0 ; CASES="*"
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --cases) shift; CASES="${1:-*}" ;;
    -h|--help) usage ;;
    *) echo "autobahn_client.sh: unknown argument $1" >&2; usage ;;
  esac
  shift
done

"$AUTOBAHN_DIR/install.sh" >/dev/null || { echo "autobahn_client.sh: install.sh failed" >&2; exit 2; }
[ -x "$WSTEST" ] || { echo "autobahn_client.sh: no wstest at $WSTEST" >&2; exit 2; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
if [ -z "${PORT:-}" ]; then
  for p in 9004 9005 9006 9007; do port_open "$p" || { PORT=$p; break; }; done
  [ -n "${PORT:-}" ] || { echo "autobahn_client.sh: ports 9004-9007 are all taken" >&2; exit 2; }
elif port_open "$PORT"; then
  echo "autobahn_client.sh: something already listens on 127.0.0.1:$PORT" >&2; exit 2
fi

OUTDIR="$CACHE/reports-client"
mkdir -p "$OUTDIR" || exit 2
rm -f "$OUTDIR"/index.json "$OUTDIR"/index.html "$OUTDIR"/${AGENT}_case_*.json \
      "$OUTDIR"/${AGENT}_case_*.html "$OUTDIR"/expected_cases.json

# The same exclusions as ../shared/autobahn/run.sh --quick.
EXCL=""
if [ "$QUICK" = 1 ]; then
  EXCL="9.*"
  for g in 12.1 12.2 12.3 12.4 12.5 13.1 13.2 13.3 13.4 13.5 13.6 13.7; do
    for i in $(seq 7 18); do EXCL="$EXCL,$g.$i"; done
  done
  CLIENT_TIMEOUT="${CLIENT_TIMEOUT:-600}"
fi
CLIENT_TIMEOUT="${CLIENT_TIMEOUT:-1800}"
json_list() { local out="" p arr=(); IFS=',' read -r -a arr <<< "$1"
  for p in "${arr[@]}"; do [ -n "$p" ] && out="$out${out:+, }\"$p\""; done; printf '%s' "$out"; }
SPEC="$OUTDIR/spec.json"
cat > "$SPEC" <<EOF
{
  "url": "ws://127.0.0.1:$PORT",
  "outdir": "$OUTDIR",
  "cases": [$(json_list "$CASES")],
  "exclude-cases": [$(json_list "$EXCL")],
  "exclude-agent-cases": {}
}
EOF
"$WSTEST_PY" - "$SPEC" > "$OUTDIR/expected_cases.json" <<'EOF' || { echo "autobahn_client.sh: cannot expand the case list" >&2; exit 2; }
import json, sys
from autobahntestsuite.caseset import CaseSet
from autobahntestsuite.case import Cases, CaseCategories, CaseSubCategories, CaseBasename
from autobahntestsuite.fuzzing import CaseSetname
spec = json.load(open(sys.argv[1]))
cs = CaseSet(CaseSetname, CaseBasename, Cases, CaseCategories, CaseSubCategories)
print(json.dumps(cs.parseSpecCases(spec)))
EOF
NCASES=$("$PYTHON3" -c 'import json,sys; print(len(json.load(open(sys.argv[1]))))' "$OUTDIR/expected_cases.json")
echo "autobahn_client.sh: $NCASES cases, fuzzingserver on ws://127.0.0.1:$PORT; reports in $OUTDIR"

SERVER_PID=""
stop_server() {
  [ -n "$SERVER_PID" ] || return 0
  kill -TERM -- "-$SERVER_PID" 2>/dev/null
  for _ in $(seq 1 50); do kill -0 -- "-$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
  kill -KILL -- "-$SERVER_PID" 2>/dev/null
  wait "$SERVER_PID" 2>/dev/null
  SERVER_PID=""
}
trap 'stop_server' EXIT
trap 'stop_server; exit 130' INT TERM

(cd "$OUTDIR" && exec setsid "$WSTEST" -m fuzzingserver -s "$SPEC") </dev/null >"$OUTDIR/wstest.log" 2>&1 &
SERVER_PID=$!
deadline=$(( $(date +%s) + ${STARTUP_TIMEOUT:-20} ))
until port_open "$PORT"; do
  if ! kill -0 "$SERVER_PID" 2>/dev/null || [ "$(date +%s)" -ge "$deadline" ]; then
    echo "autobahn_client.sh: the fuzzingserver did not start listening; wstest.log:" >&2
    tail -n 20 "$OUTDIR/wstest.log" >&2
    exit 2
  fi
  sleep 0.1
done

t0=$(date +%s)
timeout --kill-after=10 "$CLIENT_TIMEOUT" "$PYTHON3" "$ROOT/examples/autobahn_client.py" \
    "ws://127.0.0.1:$PORT" --agent "$AGENT" 2>&1 | tee "$OUTDIR/client.log" | tail -n 5
crc=${PIPESTATUS[0]}
echo "autobahn_client.sh: client finished in $(( $(date +%s) - t0 ))s (exit $crc)"
stop_server

"$PYTHON3" "$AUTOBAHN_DIR/summarize.py" "$OUTDIR/index.json" \
    --expected "$OUTDIR/expected_cases.json" --strict-close
src=$?
if [ "$src" = 0 ] && [ "$crc" != 0 ]; then
  echo "autobahn_client.sh: the client exited $crc (see $OUTDIR/client.log)" >&2; exit 1
fi
exit "$src"
