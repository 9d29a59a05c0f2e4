#!/usr/bin/env bash
# What `make infra-check` and `make images` need, installed where missing (safe to run again; each step is
# skipped when its result is already there):
#   .local/bin/tofu     OpenTofu, built from the Go module proxy (1.6.x is the last line that `go install` builds)
#   .local/bin/tflint   TFLint, built from the Go module proxy; only its bundled Terraform rules are used
#   .local/infra-venv   checkov from PyPI, pinned
#   .local/hcl-venv     python-hcl2 from PyPI, pinned, for tests/consistency.py: a venv of its own because
#                       checkov's own HCL parser (bc-python-hcl2) installs a module of the same name, `hcl2`
#   umoci, skopeo       Debian's packages: assemble and inspect OCI images without a container engine
# Go builds run under `nice -n 19`: they take minutes of both cores the first time.
#   infra-tools.sh          everything
#   infra-tools.sh images   umoci and skopeo only (what infra/images/build.sh needs)
set -euo pipefail
source "$(dirname "$0")/env.sh"

TOFU_VERSION=v1.6.3
TFLINT_VERSION=v0.54.0
CHECKOV_VERSION=3.3.30
PYTHON_HCL2_VERSION=8.1.4

VENV="$LOCAL/infra-venv"
HCL_VENV="$LOCAL/hcl-venv"

need_images=""
command -v umoci >/dev/null || need_images="$need_images umoci"
command -v skopeo >/dev/null || need_images="$need_images skopeo"
# shellcheck disable=SC2086
[ -z "$need_images" ] || apt_install $need_images
[ "${1:-all}" = images ] && exit 0
if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' >/dev/null 2>&1; then
  apt_install python3-venv
fi

go_tool tofu "github.com/opentofu/opentofu/cmd/tofu@$TOFU_VERSION"
go_tool tflint "github.com/terraform-linters/tflint@$TFLINT_VERSION"

# pip_venv VENV STAMP PACKAGE==VERSION: a venv holding that package, unless its stamp is there.
pip_venv() {
  local venv="$1" stamp="$1/.$2" spec="$3"
  [ -f "$stamp" ] && return 0
  [ -x "$venv/bin/python" ] || { log "creating $venv"; python3 -m venv "$venv"; }
  log "installing $spec into $venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "$spec" >"$LOGS/pip-$2.log" 2>&1 \
    || { tail -20 "$LOGS/pip-$2.log" >&2; die "pip install $spec failed"; }
  touch "$stamp"
}
pip_venv "$VENV" "checkov-$CHECKOV_VERSION" "checkov==$CHECKOV_VERSION"
pip_venv "$HCL_VENV" "python-hcl2-$PYTHON_HCL2_VERSION" "python-hcl2==$PYTHON_HCL2_VERSION"
