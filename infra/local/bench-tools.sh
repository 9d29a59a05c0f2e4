#!/usr/bin/env bash
# What `make bench` needs besides the servers: a Python virtual environment with matplotlib (the charts),
# in .local/venv, and Centrifugo, the peer it is measured beside, built from the Go module proxy into
# .local/bin (pinned: tests/src/centrifugo.rs names the same version). Safe to run again.
set -euo pipefail
source "$(dirname "$0")/env.sh"

VENV="$ROOT/.local/venv"
if [ ! -x "$VENV/bin/python" ]; then
  if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' >/dev/null 2>&1; then
    apt_install python3-venv
  fi
  log "creating $VENV"
  python3 -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c 'import matplotlib' >/dev/null 2>&1; then
  log "installing matplotlib into $VENV"
  "$VENV/bin/pip" install -q "matplotlib==3.9.2" >"$LOGS/pip-bench.log" 2>&1 || { tail -20 "$LOGS/pip-bench.log" >&2; die "pip install matplotlib failed"; }
fi

CENTRIFUGO_VERSION=v6.9.1
go_tool centrifugo "github.com/centrifugal/centrifugo/v6@$CENTRIFUGO_VERSION"
