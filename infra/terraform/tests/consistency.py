"""Checks that the Terraform modules configure the services the binaries are.

Reads the modules' HCL (python-hcl2) and the binaries' own description of their settings (`--help`, run from
target/debug or $CHAT_BIN_DIR), and reports, per module:

- a variable the module sets that the binary does not accept (nor the images' entry point, which turns
  *_PEM variables into the *_FILE settings, see infra/images/entrypoint.sh);
- a setting left unset that a deployment must set: one whose default points at 127.0.0.1 or localhost, one of
  the "set A or B" pairs the config code demands (`*/src/config.rs`), and a few whose defaults are for one
  machine only (PRODUCTION_REQUIRED);
- a setting neither set nor named in the module's README.md (every setting is set or documented as left at
  its default);
- a port opened to a service's tasks (security-groups ingress rules, port mappings, target groups) on which
  that service does not listen (the ports of the *_ADDR listen addresses the module sets).

Values are taken as the example root (examples/complete) passes them when they are literals, else as the
modules' defaults. Usage: consistency.py [ROOT] (ROOT: infra/terraform); exit 1 and one line per problem.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import hcl2

REPO = Path(__file__).resolve().parents[3]
DEFAULT_ROOT = REPO / "infra" / "terraform"
ENTRYPOINT = REPO / "infra" / "images" / "entrypoint.sh"

# Settings whose defaults suit one machine, not a deployment (what each default would do there).
PRODUCTION_REQUIRED = {
    "CHAT_CASSANDRA_REPLICATION": "SimpleStrategy with 1 replica",
    "CHAT_EVENTS_REPLICATION": "1 replica of the log",
    "CHAT_EVENTS_PARTITIONS": "8 partitions, whatever the workers' bound",
}


@dataclass(frozen=True)
class Target:
    """One container the modules configure: where its variables are, which binary reads them."""

    module: str
    env_local: str
    secrets_local: str | None
    argv: tuple[str, ...]
    tier: str | None  # its security group in modules/security-groups, if it listens


TARGETS = [
    Target("gateway", "environment_all", "secrets_all", ("gateway",), "gateway"),
    Target("chat-service", "environment_all", "secrets_all", ("chat-service",), "chat_service"),
    Target("delivery-worker", "environment_all", "secrets_all", ("delivery-worker",), "delivery_worker"),
    Target("chatctl-tasks", "migrate_environment", None, ("chatctl", "migrate"), None),
    Target("chatctl-tasks", "create_topics_environment", None, ("chatctl", "create-topics"), None),
]


# --- what the binaries accept -------------------------------------------------------------------------------


@dataclass
class Settings:
    accepted: set[str]
    defaults: dict[str, str]  # name -> default as --help prints it


def binary_settings(argv: tuple[str, ...], bin_dir: Path) -> Settings:
    exe = bin_dir / argv[0]
    if not exe.exists():
        raise SystemExit(f"consistency: {exe} is missing: build the binaries first (cargo build --bins)")
    text = subprocess.run([str(exe), *argv[1:], "--help"], capture_output=True, text=True, check=True).stdout
    # clap prints each option's help, then "[env: NAME=]" and maybe "[default: VALUE]", possibly on later lines.
    accepted: set[str] = set()
    defaults: dict[str, str] = {}
    for block in re.split(r"\n\s*(?=-)", text):
        env = re.search(r"\[env: ([A-Z0-9_]+)", block)
        if not env:
            continue
        accepted.add(env.group(1))
        default = re.search(r"\[default: (.*?)\](?:\s|$)", block, re.S)
        if default:
            defaults[env.group(1)] = default.group(1)
    # Every binary sets its log levels from RUST_LOG (lifecycle::init_tracing).
    if "RUST_LOG" in (REPO / "lifecycle" / "src" / "lib.rs").read_text():
        accepted.add("RUST_LOG")
    return Settings(accepted, defaults)


def entrypoint_pems() -> dict[str, str]:
    """PEM variable -> the *_FILE setting the entry point fills with it."""
    return dict(re.findall(r"^pem_to_file (\w+) (\w+) ", ENTRYPOINT.read_text(), re.M))


def one_of_groups() -> list[tuple[str, str]]:
    """The `set A or B` demands of the services' configuration code."""
    groups = []
    for config in sorted(REPO.glob("*/src/config.rs")):
        groups += re.findall(r'"set ([A-Z0-9_]+) or ([A-Z0-9_]+)"', config.read_text())
    return groups


# --- the modules, as HCL ------------------------------------------------------------------------------------


def unquote(name: str) -> str:
    return name[1:-1] if len(name) >= 2 and name[0] == '"' and name[-1] == '"' else name


def load_dir(path: Path) -> dict:
    """All blocks of a module folder's .tf files, merged by kind."""
    merged: dict = {}
    for tf in sorted(path.glob("*.tf")):
        with tf.open() as f:
            parsed = hcl2.load(f)
        for kind, blocks in parsed.items():
            merged.setdefault(kind, []).extend(blocks)
    return merged


def locals_of(parsed: dict) -> dict:
    out: dict = {}
    for block in parsed.get("locals", []):
        out.update({k: v for k, v in block.items() if k != "__is_block__"})
    return out


def variable_defaults(parsed: dict) -> dict:
    out = {}
    for block in parsed.get("variable", []):
        for name, body in block.items():
            if "default" in body:
                out[unquote(name)] = body["default"]
    return out


def resources(parsed: dict, kind: str) -> list[tuple[str, dict]]:
    out = []
    for block in parsed.get("resource", []):
        for rkind, named in block.items():
            if unquote(rkind) == kind:
                out += [(unquote(n), body) for n, body in named.items()]
    return out


def module_calls(parsed: dict) -> list[tuple[str, dict]]:
    return [(unquote(n), body) for block in parsed.get("module", []) for n, body in block.items()]


def is_literal(value) -> bool:
    if isinstance(value, (int, float, bool)):
        return True
    return isinstance(value, str) and value.startswith('"') and "${" not in value


def effective_variables(root: Path, module: str) -> dict:
    """The module's variable defaults, overridden by the literal arguments the example root passes."""
    values = variable_defaults(load_dir(root / "modules" / module))
    example = root / "examples" / "complete"
    if example.is_dir():
        for _, body in module_calls(load_dir(example)):
            if unquote(str(body.get("source", ""))).rstrip("/").endswith(f"/modules/{module}"):
                values.update({k: v for k, v in body.items() if is_literal(v)})
    return values


def resolve(expr, variables: dict):
    """A literal value, with var.X references replaced by their values; None if something else remains."""
    if isinstance(expr, (int, float)):
        return expr
    if not isinstance(expr, str):
        return None
    text = expr
    whole = re.fullmatch(r"\$\{var\.(\w+)\}", text)
    if whole:
        return resolve_value(variables.get(whole.group(1)), variables)
    text = unquote(text)

    def substitute(m: re.Match) -> str:
        value = resolve_value(variables.get(m.group(1)), variables)
        return str(value) if value is not None else m.group(0)

    text = re.sub(r"\$\{var\.(\w+)\}", substitute, text)
    return None if "${" in text else text


def resolve_value(value, variables: dict):
    if value is None:
        return None
    if isinstance(value, str):
        return resolve(value, variables)
    return value


def port_of(address) -> int | None:
    if isinstance(address, str) and re.search(r":\d+$", address):
        return int(address.rsplit(":", 1)[1])
    return None


def as_int(value) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return int(value)
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


# --- the checks ---------------------------------------------------------------------------------------------


def check(root: Path, bin_dir: Path, require_all: bool = True) -> list[str]:
    problems: list[str] = []
    pems = entrypoint_pems()
    groups = one_of_groups()
    listen_ports: dict[str, set[int]] = {}

    for target in TARGETS:
        module_dir = root / "modules" / target.module
        where = f"modules/{target.module} ({' '.join(target.argv)})"
        if not module_dir.is_dir():
            if require_all:
                problems.append(f"{where}: module missing")
            continue
        parsed = load_dir(module_dir)
        local_values = locals_of(parsed)
        if target.env_local not in local_values:
            problems.append(f"{where}: no local.{target.env_local}")
            continue
        environment = local_values[target.env_local]
        secrets = local_values.get(target.secrets_local, {}) if target.secrets_local else {}
        settings = binary_settings(target.argv, bin_dir)

        # Names as the binary sees them: a *_PEM secret becomes its *_FILE setting.
        set_names: set[str] = set()
        for name in list(environment) + list(secrets):
            if name in pems:
                if pems[name] not in settings.accepted:
                    problems.append(f"{where}: sets {name}, whose file setting {pems[name]} the binary does not accept")
                set_names.add(pems[name])
            elif name == "SECRETS_DIR":
                set_names.add(name)
            elif name not in settings.accepted:
                problems.append(f"{where}: sets {name}, which the binary does not accept")
            else:
                set_names.add(name)

        for name, default in sorted(settings.defaults.items()):
            if ("127.0.0.1" in default or "localhost" in default) and name not in set_names:
                problems.append(f"{where}: leaves {name} unset (its default {default} is this machine)")
        for name, why in PRODUCTION_REQUIRED.items():
            if name in settings.accepted and name not in set_names:
                problems.append(f"{where}: leaves {name} unset (its default is {why})")
        for a, b in groups:
            if a in settings.accepted and b in settings.accepted and not ({a, b} & set_names):
                problems.append(f"{where}: leaves both {a} and {b} unset (the binary needs one)")

        readme = module_dir / "README.md"
        documented = set(re.findall(r"`([A-Z][A-Z0-9_]+)`", readme.read_text())) if readme.exists() else set()
        for name in sorted(settings.accepted - set_names - documented):
            problems.append(f"{where}: {name} is neither set nor documented in README.md")

        # Listen ports: the *_ADDR settings bound by this module (advertised addresses are not listened on).
        if target.tier:
            variables = effective_variables(root, target.module)
            ports = set()
            for name, expr in environment.items():
                if name.endswith("_ADDR") and "ADVERTISE" not in name:
                    port = port_of(resolve(expr, variables))
                    if port is None:
                        problems.append(f"{where}: cannot tell the port of {name} = {expr}")
                    else:
                        ports.add(port)
            listen_ports[target.tier] = ports
            problems += module_ports(where, parsed, variables, ports)

    sg_dir = root / "modules" / "security-groups"
    if sg_dir.is_dir():
        problems += security_group_ports(root, sg_dir, listen_ports)
    elif require_all:
        problems.append("modules/security-groups: module missing")
    return problems


def module_ports(where: str, parsed: dict, variables: dict, listening: set[int]) -> list[str]:
    """Ports a service module maps or balances to its tasks, against the ports the service listens on."""
    problems = []
    opened = []
    for _, body in module_calls(parsed):
        for mapping in body.get("port_mappings", []) or []:
            opened.append(("port mapping", mapping.get("container_port")))
        lb = body.get("load_balancer")
        if isinstance(lb, dict):
            opened.append(("load balancer", lb.get("container_port")))
    for name, body in resources(parsed, "aws_lb_target_group"):
        opened.append((f"target group {name}", body.get("port")))
    for what, expr in opened:
        port = as_int(resolve(expr, variables))
        if port is None:
            problems.append(f"{where}: cannot tell the port of its {what} ({expr})")
        elif port not in listening:
            problems.append(f"{where}: its {what} opens port {port}, where the service does not listen {sorted(listening)}")
    return problems


def security_group_ports(root: Path, sg_dir: Path, listening: dict[str, set[int]]) -> list[str]:
    """Ingress rules to a service tier's tasks, against the ports that service listens on."""
    problems = []
    variables = effective_variables(root, "security-groups")
    for name, body in resources(load_dir(sg_dir), "aws_vpc_security_group_ingress_rule"):
        tier = re.search(r'aws_security_group\.this\["(\w+)"\]', str(body.get("security_group_id", "")))
        if not tier or tier.group(1) not in listening:
            continue
        low, high = as_int(resolve(body.get("from_port"), variables)), as_int(resolve(body.get("to_port"), variables))
        if low is None or high is None:
            problems.append(f"modules/security-groups: cannot tell the ports of ingress rule {name}")
            continue
        for port in range(low, high + 1):
            if port not in listening[tier.group(1)]:
                problems.append(
                    f"modules/security-groups: ingress rule {name} opens port {port} to {tier.group(1)}, "
                    f"which listens on {sorted(listening[tier.group(1)])} only"
                )
                break
    return problems


def main() -> int:
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_ROOT
    bin_dir = Path(os.environ.get("CHAT_BIN_DIR", REPO / "target" / "debug"))
    problems = check(root, bin_dir)
    for p in problems:
        print(p)
    print(f"consistency: {len(TARGETS)} containers checked against the binaries' --help: {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
