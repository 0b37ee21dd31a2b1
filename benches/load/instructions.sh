#!/usr/bin/env bash
# Instructions per request, nginx beside Sluice (uring, tokio), each under callgrind:
# see benches/load/run.py. Needs nginx, wrk, valgrind: apt-get install nginx-light wrk valgrind
set -euo pipefail
exec python3 "$(dirname "$0")/run.py" --instructions --duration "${DURATION:-5}" --connections "${CONNECTIONS:-16}" "$@"
