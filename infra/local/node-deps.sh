#!/usr/bin/env bash
# Installs the npm packages of each folder given (clients/js, clients/web) from its committed lock file, when
# they are missing or the lock changed since the last install; with --build, also runs the folder's build
# script when it has one. Needs Node.js 20 or later.
#   node-deps.sh [--build] DIR...
set -euo pipefail
source "$(dirname "$0")/env.sh"

build=""
[ "${1:-}" = "--build" ] && { build=1; shift; }
command -v node >/dev/null && node -e 'process.exit(Number(process.versions.node.split(".")[0]) < 20 ? 1 : 0)' \
  || die "Node.js 20 or later (node, npm) is needed on PATH for $*"
for dir in "$@"; do
  cd "$ROOT/$dir"
  if ! cmp -s package-lock.json node_modules/.installed-lock; then
    log "npm ci in $dir"
    npm ci --no-audit --no-fund >"$LOGS/npm-$(basename "$dir").log" 2>&1 \
      || { tail -20 "$LOGS/npm-$(basename "$dir").log" >&2; die "npm ci failed in $dir"; }
    cp package-lock.json node_modules/.installed-lock
  fi
  if [ -n "$build" ] && node -e 'process.exit(require("./package.json").scripts?.build ? 0 : 1)'; then
    npm run --silent build || die "the build of $dir failed"
  fi
done
