#!/bin/sh
# Autobahn|Testsuite (wstest -m fuzzingclient) against examples/echo_server.py.
#
#   scripts/autobahn.sh            # groups 1-11 (no compression), about 20-30 s
#   scripts/autobahn.sh --quick    # also skips group 9 (large messages)
#
# Uses the runner in ../shared/autobahn (or $AUTOBAHN_DIR): it installs wstest
# (Python 2.7 code) into a throwaway cache directory on first use, runs every
# case, prints a summary and exits non-zero on any failure. --strict-close also
# fails the run on any behaviorClose other than OK / INFORMATIONAL.
set -eu
cd "$(dirname "$0")/.."
AUTOBAHN_DIR=${AUTOBAHN_DIR:-../shared/autobahn}
PORT=${PORT:-9001}
"$AUTOBAHN_DIR/install.sh"
exec "$AUTOBAHN_DIR/run.sh" "$PORT" \
    "exec python3 examples/echo_server.py --max-payload-size 0 --port $PORT" \
    --no-deflate --strict-close "$@"
