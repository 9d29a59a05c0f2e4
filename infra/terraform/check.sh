#!/usr/bin/env bash
# infra/terraform/check.sh: the offline checks of the Terraform modules (part of `make infra-check`).
#   1. tofu fmt -check -recursive    every .tf file formatted as OpenTofu formats it
#   2. tofu init -backend=false      skipped: it needs the providers, which cannot be downloaded here (and
#                                    `tofu validate` with them); tflint and the checks below read the HCL alone
#   3. tflint, per module            the bundled Terraform rules, preset "all" (.tflint.hcl); no plugin download
#   4. checkov                       offline; no failed check, every skip justified inline (#checkov:skip=ID:why)
#   5. tests/docs.py --check         each README's inputs/outputs tables match variables.tf and outputs.tf
#   6. tests/test_consistency.py     settings the modules give the binaries, against their --help (and a bad
#                                    fixture that must fail)
# Needs the tools of infra/local/infra-tools.sh and the debug binaries (cargo build --bins).
set -euo pipefail
source "$(dirname "$0")/../local/env.sh"
"$ROOT/infra/local/infra-tools.sh"

TF="$ROOT/infra/terraform"
BIN_DIR="$LOCAL/bin"
export TF_CLI_CONFIG_FILE=/dev/null CHECKPOINT_DISABLE=1 TF_IN_AUTOMATION=1
say() { printf '[terraform] %s\n' "$*"; }

"$BIN_DIR/tofu" fmt -check -recursive -diff "$TF"
say "tofu fmt: every file formatted"

for dir in "$TF"/modules/* "$TF"/examples/*; do
  "$BIN_DIR/tflint" --chdir="$dir" --config="$TF/.tflint.hcl" --no-color \
    || { printf '[terraform] tflint found issues in %s\n' "${dir#"$ROOT"/}" >&2; exit 1; }
done
say "tflint: no issue in $(ls -d "$TF"/modules/* "$TF"/examples/* | wc -l) modules and examples"

out="$LOCAL/logs/checkov.json"
status=0
(cd "$TF" && BC_SKIP_MAPPING=TRUE "$LOCAL/infra-venv/bin/checkov" -d . --framework terraform --skip-download \
  --skip-path tests/fixtures -o json) >"$out" 2>"$LOCAL/logs/checkov.err" || status=$?
python3 - "$out" "$status" <<'PY'
import json, sys
path, status = sys.argv[1], int(sys.argv[2])
try:
    reports = json.load(open(path))
except ValueError:
    sys.exit(f"[terraform] checkov gave no report (exit {status}); see {path} and checkov.err")
reports = reports if isinstance(reports, list) else [reports]
failed = [c for r in reports for c in r["results"].get("failed_checks", [])]
skipped = [c for r in reports for c in r["results"].get("skipped_checks", [])]
for c in failed:
    print(f"[terraform] checkov FAILED {c['check_id']} {c['resource']} ({c['file_path']}:{c['file_line_range'][0]}): {c['check_name']}", file=sys.stderr)
unjustified = [c for c in skipped if not (c["check_result"].get("suppress_comment") or "").strip()]
for c in unjustified:
    print(f"[terraform] checkov skip without a reason: {c['check_id']} {c['resource']}", file=sys.stderr)
passed = sum(r["summary"]["passed"] for r in reports)
print(f"[terraform] checkov: {passed} passed, {len(failed)} failed, {len(skipped)} skipped, each with its reason inline:")
for check_id in sorted({c["check_id"] for c in skipped}):
    these = [c for c in skipped if c["check_id"] == check_id]
    for reason in sorted({c["check_result"]["suppress_comment"] for c in these}):
        print(f"[terraform]   {check_id} ({sum(c['check_result']['suppress_comment'] == reason for c in these)}): {reason}")
sys.exit(1 if failed or unjustified or status not in (0, 1) else 0)
PY

"$LOCAL/hcl-venv/bin/python" "$TF/tests/docs.py" --check
say "README tables match the variables and outputs"
"$LOCAL/hcl-venv/bin/python" -m unittest discover -s "$TF/tests" 2>&1
"$LOCAL/hcl-venv/bin/python" "$TF/tests/consistency.py"
