"""The inputs and outputs tables of each module's README.md, made from its variables.tf and outputs.tf.

The tables sit between `<!-- BEGIN_TF_DOCS -->` and `<!-- END_TF_DOCS -->` (terraform-docs' markers).
  docs.py          rewrite the tables of every module and example
  docs.py --check  exit 1 when a table is not what the HCL says (run by `make infra-check`)
"""

from __future__ import annotations

import sys
from pathlib import Path

import hcl2

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- BEGIN_TF_DOCS -->", "<!-- END_TF_DOCS -->"


def unquote(s):
    return s[1:-1] if isinstance(s, str) and len(s) >= 2 and s[0] == '"' and s[-1] == '"' else s


def cell(value) -> str:
    text = str(unquote(value)) if not isinstance(value, str) else unquote(value)
    text = text.replace("${", "").replace("}", "") if text.startswith("${") else text
    return text.replace('\\"', '"').replace("|", "\\|").replace("\n", " ")


def default_cell(body: dict) -> str:
    if "default" not in body:
        return "required"
    value = body["default"]
    if value is None:
        return "`null`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, str):
        return f"`{value}`"
    if isinstance(value, (list, dict)):
        import json

        return "`" + json.dumps(value).replace('"', "&quot;") + "`"
    return f"`{value}`"


def type_cell(body: dict) -> str:
    t = body.get("type", "any")
    t = t[2:-1] if isinstance(t, str) and t.startswith("${") else t
    return "`" + " ".join(str(t).split()) + "`"


def tables(folder: Path) -> str:
    rows_in, rows_out = [], []
    for name in ("variables.tf", "outputs.tf"):
        path = folder / name
        if not path.exists():
            continue
        parsed = hcl2.load(path.open())
        for block in parsed.get("variable", []):
            for var, body in block.items():
                rows_in.append(
                    f"| `{unquote(var)}` | {cell(body.get('description', ''))} | {type_cell(body)} | {default_cell(body)} |"
                )
        for block in parsed.get("output", []):
            for out, body in block.items():
                rows_out.append(f"| `{unquote(out)}` | {cell(body.get('description', ''))} |")
    lines = [BEGIN, "## Inputs", "", "| Name | Description | Type | Default |", "|---|---|---|---|", *rows_in, ""]
    lines += ["## Outputs", "", "| Name | Description |", "|---|---|", *rows_out, END]
    return "\n".join(lines)


def main() -> int:
    check = "--check" in sys.argv[1:]
    stale = []
    for folder in sorted(list((ROOT / "modules").iterdir()) + [ROOT / "examples" / "complete"]):
        readme = folder / "README.md"
        text = readme.read_text() if readme.exists() else f"# {folder.name}\n\n{BEGIN}\n{END}\n"
        if BEGIN not in text or END not in text:
            stale.append(f"{readme}: no {BEGIN} ... {END} section")
            continue
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
        new = head + tables(folder) + tail
        if new != text:
            if check:
                stale.append(f"{readme}: inputs/outputs tables are stale (run {Path(__file__).name})")
            else:
                readme.write_text(new)
    for s in stale:
        print(s)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
