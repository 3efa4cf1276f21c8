#!/bin/sh
# Autobahn|Testsuite (wstest -m fuzzingclient) against examples/echo_server.py.
#
#   scripts/autobahn.sh                    # groups 1-11 (no compression), about 30 s
#   scripts/autobahn.sh --deflate          # groups 1-13 (12-13: permessage-deflate)
#   scripts/autobahn.sh --deflate --quick  # 1-13 without 9.* and the bulk cases 12.*.7-18, 13.*.7-18
#   scripts/autobahn.sh --quick            # 1-11 without group 9 (large messages)
#
# Uses the runner in ../shared/autobahn (or $AUTOBAHN_DIR): it installs wstest
# (Python 2.7 code) into a throwaway cache directory on first use, runs every
# case, prints a summary and exits non-zero on any failure, including any
# behaviorClose other than OK / INFORMATIONAL (--strict-close). Other options
# (--cases, --exclude) go to run.sh. The evws client is checked by
# scripts/autobahn_client.sh.
set -eu
cd "$(dirname "$0")/.."
AUTOBAHN_DIR=${AUTOBAHN_DIR:-../shared/autobahn}
PORT=${PORT:-9001}
GROUPS_FLAG=--no-deflate
SERVER_FLAGS=--no-compression
CACHE="${EVWS_TOOLS_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/evws-tools}/autobahn"
OUTDIR="$CACHE/reports"
for arg in "$@"; do
    shift
    if [ "$arg" = --deflate ]; then
        GROUPS_FLAG=   # 12.* and 13.* stay in; UNIMPLEMENTED then fails the run
        SERVER_FLAGS=
        OUTDIR="$CACHE/reports-deflate"   # apart from a concurrent 1-11 run's reports
    else
        set -- "$@" "$arg"
    fi
done
"$AUTOBAHN_DIR/install.sh"
exec "$AUTOBAHN_DIR/run.sh" "$PORT" \
    "exec python3 examples/echo_server.py --max-payload-size 0 --port $PORT $SERVER_FLAGS" \
    "$OUTDIR" $GROUPS_FLAG --strict-close "$@"
