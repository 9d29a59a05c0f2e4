#!/usr/bin/env bash
# Installs Debian's Chromium for the web chat's browser test (clients/web/test), when it is missing. A
# browser downloaded by an npm install script cannot be fetched here: playwright-core drives this one.
set -euo pipefail
source "$(dirname "$0")/env.sh"

command -v chromium >/dev/null || apt_install chromium
