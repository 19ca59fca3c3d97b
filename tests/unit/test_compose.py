"""The container deployment (compose/) checked against the code it deploys.

Docker does not run here, so these tests read compose/compose.yaml, compose/Dockerfile and
compose/.env.example and compare them with what they must agree with: the click group's
subcommands, the Settings fields, and pyproject.toml.
"""

from __future__ import annotations

import importlib
import json
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from batchfleet.cli import main
from batchfleet.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_DIR = ROOT / "compose"
COMPOSE_FILE = COMPOSE_DIR / "compose.yaml"
DOCKERFILE = COMPOSE_DIR / "Dockerfile"
ENV_EXAMPLE = COMPOSE_DIR / ".env.example"
PYPROJECT = ROOT / "pyproject.toml"

ROLES = {"dispatcher": "dispatcher", "worker": "worker", "aggregator-a": "aggregator", "aggregator-b": "aggregator"}
CONSOLE = "web"  # the one batchfleet service that is not scaled: it publishes a fixed port
ACL_JOB = "redis-acl"  # the one-shot job that writes Redis's aclfile before Redis starts
REDIS_USERS = {
    "dispatcher": "dispatcher",
    "worker": "worker",
    "aggregator-a": "aggregator",
    "aggregator-b": "aggregator",
    "web": "reader",
}
PREFIX = str(Settings.model_config.get("env_prefix", ""))
SETTING_NAMES = {f"{PREFIX}{name}".upper() for name in Settings.model_fields}

# ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?err}, ...; `$$` is a literal dollar.
_INTERPOLATION = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}")
_ESCAPED_DOLLAR = "\x00"


# -- helpers: compose ------------------------------------------------------------------------------
def _strings(node: object) -> list[str]:
    """Every string value in a parsed YAML document (what compose interpolates; comments are not)."""
    if isinstance(node, dict):
        return [s for value in node.values() for s in _strings(value)]
    if isinstance(node, list):
        return [s for value in node for s in _strings(value)]
    return [node] if isinstance(node, str) else []


def _interpolations(document: object) -> list[re.Match[str]]:
    return [m for s in _strings(document) for m in _INTERPOLATION.finditer(s.replace("$$", _ESCAPED_DOLLAR))]


def _resolve(value: object) -> str:
    """What compose makes of a value when neither the shell nor .env sets anything."""
    text = str(value).replace("$$", _ESCAPED_DOLLAR)
    text = _INTERPOLATION.sub(lambda m: m.group("arg") if m.group("op") in (":-", "-") else "", text)
    return text.replace(_ESCAPED_DOLLAR, "$")


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def _argv(value: object) -> list[str]:
    if value is None:
        return []
    return shlex.split(value) if isinstance(value, str) else [str(v) for v in value]


def _seconds(duration: str) -> float:
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 0.000001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", duration)
    if not parts or "".join(n + u for n, u in parts) != duration:
        raise ValueError(f"not a compose duration: {duration!r}")
    return sum(float(n) * units[u] for n, u in parts)


def _is_batchfleet(service: dict[str, Any]) -> bool:
    build = service.get("build") or {}
    dockerfile = build.get("dockerfile", "") if isinstance(build, dict) else ""
    return dockerfile.endswith("compose/Dockerfile") or str(service.get("image", "")).startswith("batchfleet")


def _listeners(value: str) -> dict[str, str]:
    """KAFKA_*LISTENERS "NAME://host:port,..." -> {NAME: "host:port"}."""
    pairs = (item.strip().split("://", 1) for item in _resolve(value).split(",") if item.strip())
    return {name: address for name, address in pairs}


def _env_example() -> tuple[dict[str, str], set[str]]:
    """(active NAME=value lines, names that appear only commented out)."""
    active: dict[str, str] = {}
    commented: set[str] = set()
    for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        if m := re.match(r"^([A-Z_][A-Z0-9_]*)=(.*)$", line):
            active[m.group(1)] = m.group(2).strip()
        elif m := re.match(r"^#\s*([A-Z_][A-Z0-9_]*)=", line):
            commented.add(m.group(1))
    return active, commented - set(active)


# -- helpers: Dockerfile ---------------------------------------------------------------------------
def _instructions(text: str) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) per instruction; continuation lines joined, comment lines dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        if line.strip().startswith("#") or not line.strip():
            continue
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        keyword, _, args = pending.strip().partition(" ")
        out.append((keyword.upper(), args.strip()))
        pending = ""
    return out


def _stages(text: str) -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for keyword, args in _instructions(text):
        if keyword == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((keyword, args))
    return stages


def _stage_name(stage: list[tuple[str, str]]) -> str | None:
    tokens = stage[0][1].split()
    return tokens[2] if len(tokens) >= 3 and tokens[1].upper() == "AS" else None


_PIP_VALUE_OPTIONS = {
    "--wheel-dir",
    "-w",
    "--find-links",
    "-f",
    "--python",
    "-r",
    "--requirement",
    "-c",
    "--constraint",
    "--index-url",
    "-i",
    "--extra-index-url",
    "--target",
    "-t",
    "--prefix",
    "--root",
}


def _pip_calls(stage: list[tuple[str, str]]) -> list[tuple[str, list[str]]]:
    """(subcommand, requirement arguments) of every `pip install`/`pip wheel` in the stage's RUNs."""
    calls: list[tuple[str, list[str]]] = []
    for keyword, args in stage:
        if keyword != "RUN":
            continue
        for segment in re.split(r"&&|\|\||;", args):
            tokens = shlex.split(segment)
            sub = next((t for t in tokens if t in ("install", "wheel")), None)
            if sub is None or not any(Path(t).name.startswith("pip") for t in tokens[: tokens.index(sub)]):
                continue
            calls.append((sub, _requirements(tokens[tokens.index(sub) + 1 :])))
    return calls


def _requirements(tokens: list[str]) -> list[str]:
    reqs: list[str] = []
    skip = False
    for token in tokens:
        if skip:
            skip = False
        elif token in _PIP_VALUE_OPTIONS:
            skip = True
        elif not token.startswith("-"):
            reqs.append(token)
    return reqs


# -- fixtures --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(data, dict) and isinstance(data.get("services"), dict)
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def fleet(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The long-running services that run the batchfleet image (not one-shot jobs)."""
    return {name: svc for name, svc in services.items() if _is_batchfleet(svc) and not _one_shot(svc)}


def _one_shot(service: dict[str, Any]) -> bool:
    """A job that runs once to completion (others wait for it with service_completed_successfully)."""
    return str(service.get("restart", "")) == "no"


@pytest.fixture(scope="module")
def stages() -> list[list[tuple[str, str]]]:
    return _stages(DOCKERFILE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def pyproject() -> dict[str, Any]:
    return tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))


def _server(services: dict[str, dict[str, Any]], name: str, image: str) -> dict[str, Any]:
    assert name in services, f"no {name} service"
    assert str(services[name].get("image", "")).startswith(image), f"{name} does not run {image}"
    return services[name]


def _dockerfile_entrypoint(stages: list[list[tuple[str, str]]]) -> list[str]:
    entrypoints = [args for keyword, args in stages[-1] if keyword == "ENTRYPOINT"]
    assert entrypoints, "the final stage has no ENTRYPOINT"
    value = json.loads(entrypoints[-1])  # exec form is a JSON array; shell form is not JSON
    assert isinstance(value, list) and all(isinstance(v, str) for v in value)
    return value


# -- compose: services and roles -------------------------------------------------------------------
def test_every_role_runs_from_the_repo_image(fleet: dict[str, dict[str, Any]]) -> None:
    assert set(ROLES) <= set(fleet), f"missing roles: {sorted(set(ROLES) - set(fleet))}"
    for name, svc in fleet.items():
        build = svc.get("build")
        assert isinstance(build, dict), f"{name}: build must name context and dockerfile"
        context = (COMPOSE_DIR / build["context"]).resolve()
        assert context == ROOT, f"{name}: build context {context} is not the repository root"
        assert (context / build["dockerfile"]).resolve() == DOCKERFILE.resolve()


def test_role_commands_are_batchfleet_subcommands(fleet: dict[str, dict[str, Any]], stages: list[list[tuple[str, str]]]) -> None:
    for name, svc in fleet.items():
        entrypoint = _argv(svc["entrypoint"]) if "entrypoint" in svc else _dockerfile_entrypoint(stages)
        argv = entrypoint + _argv(svc.get("command"))
        assert argv[:1] == ["batchfleet"], f"{name}: runs {argv}"
        assert len(argv) >= 2 and argv[1] in main.commands, f"{name}: {argv[1:2]} is not a batchfleet subcommand"
        if name in ROLES:
            assert argv[1] == ROLES[name], f"{name}: runs {argv[1]!r}, expected {ROLES[name]!r}"


def test_role_healthchecks_run_batchfleet_health(fleet: dict[str, dict[str, Any]]) -> None:
    assert "health" in main.commands, "`batchfleet health` does not exist"
    health = main.commands["health"]
    choices = [p.type.choices for p in health.params if isinstance(p, click.Argument) and isinstance(p.type, click.Choice)]
    for name, role in ROLES.items():
        test = _argv(fleet[name]["healthcheck"]["test"])
        assert test[:1] in (["CMD"], ["CMD-SHELL"]), f"{name}: healthcheck {test}"
        argv = shlex.split(test[1]) if test[0] == "CMD-SHELL" else test[1:]
        assert argv == ["batchfleet", "health", role], f"{name}: healthcheck runs {argv}"
        if choices:
            assert role in choices[0], f"{name}: `batchfleet health` accepts {choices[0]}, not {role!r}"


def test_every_service_has_a_healthcheck(services: dict[str, dict[str, Any]]) -> None:
    for name, svc in services.items():
        if _one_shot(svc):
            continue
        check = svc.get("healthcheck") or {}
        test = _argv(check.get("test"))
        assert test and test[0] != "NONE" and not check.get("disable"), f"{name}: no healthcheck"


def test_depends_on_waits_until_healthy(services: dict[str, dict[str, Any]]) -> None:
    for name, svc in services.items():
        deps = svc.get("depends_on") or {}
        assert isinstance(deps, dict), f"{name}: depends_on must use the long form with a condition"
        for dep, spec in deps.items():
            assert dep in services, f"{name}: depends on unknown service {dep!r}"
            if _one_shot(services[dep]):
                assert (spec or {}).get("condition") == "service_completed_successfully", f"{name} -> {dep}: not completed"
                continue
            assert (spec or {}).get("condition") == "service_healthy", f"{name} -> {dep}: not service_healthy"
            assert "healthcheck" in services[dep], f"{name} -> {dep}: {dep} has no healthcheck to wait for"
    kafka, redis = "kafka", "redis"
    assert {kafka, redis} <= set(services["dispatcher"]["depends_on"])
    for name in ("worker", "aggregator-a", "aggregator-b"):
        assert redis in services[name]["depends_on"], f"{name} must wait for redis"


def test_scaled_roles_have_no_fixed_names_or_ports(fleet: dict[str, dict[str, Any]]) -> None:
    assert "worker" in fleet
    for name, svc in fleet.items():
        if name == CONSOLE:
            continue
        assert "container_name" not in svc, f"{name}: container_name prevents --scale"
        assert not svc.get("ports"), f"{name}: published ports clash under --scale"


def test_web_console_is_published_on_loopback_and_checked_over_http(fleet: dict[str, dict[str, Any]]) -> None:
    web = fleet[CONSOLE]
    argv = _argv(web.get("entrypoint")) + _argv(web.get("command"))
    assert argv == ["batchfleet", "web"], f"{CONSOLE}: runs {argv}"
    env = {k: _resolve(v) for k, v in _environment(web).items()}
    port = env[f"{PREFIX}WEB_PORT"]
    assert env[f"{PREFIX}WEB_HOST"] == "0.0.0.0", "inside its container the console must listen on every interface"
    assert env.get(f"{PREFIX}WEB_TOKEN", "") == "", "without .env the console must be read-only"
    assert Settings(web_token=env.get(f"{PREFIX}WEB_TOKEN", "")).web_token is None, "an empty token must mean read-only"
    [published] = [_resolve(p) for p in web["ports"]]
    bind, host_port, container_port = published.rsplit(":", 2)
    assert bind == "127.0.0.1" and container_port == port and host_port == port, published
    assert int((web.get("deploy") or {}).get("replicas", 1)) == 1
    check = " ".join(_argv(web["healthcheck"]["test"]))
    assert "/healthz" in check and f"{PREFIX}WEB_PORT" in check
    assert "redis" in web["depends_on"]


def test_stop_grace_period_covers_the_worker_drain(fleet: dict[str, dict[str, Any]]) -> None:
    default_grace = float(Settings.model_fields["worker_grace_s"].default)
    for name, svc in fleet.items():
        grace = float(_resolve(_environment(svc).get(f"{PREFIX}WORKER_GRACE_S", default_grace)))
        assert "stop_grace_period" in svc, f"{name}: no stop_grace_period (Docker's default is 10 s)"
        assert _seconds(svc["stop_grace_period"]) > grace, f"{name}: stop_grace_period <= drain of {grace} s"


# -- compose: settings and .env.example ------------------------------------------------------------
def test_batchfleet_variables_are_real_settings(compose: dict[str, Any], services: dict[str, dict[str, Any]]) -> None:
    used = {m.group("name") for m in _interpolations(compose)}
    for svc in services.values():
        used |= set(_environment(svc))
    active, commented = _env_example()
    used |= set(active) | commented
    unknown = sorted(n for n in used if n.startswith(PREFIX) and n not in SETTING_NAMES)
    assert not unknown, f"not fields of batchfleet.settings.Settings: {unknown}"


def test_compose_needs_nothing_but_passwords_from_the_env_file(compose: dict[str, Any], fleet: dict[str, dict[str, Any]]) -> None:
    """Every setting has a default; every password is required (`${NAME:?...}`): there are no default passwords."""
    _, commented = _env_example()
    for m in _interpolations(compose):
        name, op = m.group("name"), m.group("op")
        if name.endswith("_PASSWORD") and name != "REDIS_ADMIN_PASSWORD":
            assert op == ":?" and name in m.group("arg"), f"${{{name}}} must be required (:?), with a message naming it"
            assert name in commented, f"{name}: .env.example must show it (commented out: no value to copy)"
        else:
            assert op in (":-", "-"), f"${{{name}}} has no default"
    for name, svc in fleet.items():
        for entry in svc.get("env_file") or []:
            assert isinstance(entry, dict) and entry.get("required") is False, f"{name}: env_file must be optional"


def test_env_example_documents_the_stack(compose: dict[str, Any], fleet: dict[str, dict[str, Any]]) -> None:
    active, commented = _env_example()
    referenced = {m.group("name") for m in _interpolations(compose)}
    assert not referenced - set(active) - commented, f"not in .env.example: {sorted(referenced - set(active))}"
    for name, svc in fleet.items():
        missing = sorted(set(_environment(svc)) - set(active) - commented)
        assert not missing, f"{name} sets {missing}, which .env.example does not show"
    for m in _interpolations(compose):
        var, default = m.group("name"), m.group("arg")
        if var in active:
            assert active[var] == default, f"{var}: compose default {default!r} != .env.example {active[var]!r}"


def test_env_example_points_roles_at_the_compose_services() -> None:
    active, commented = _env_example()
    assert f"{PREFIX}REDIS_URL" in commented, "compose sets each role's Redis URL (its own user); .env.example only shows one"
    assert active[f"{PREFIX}KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
    assert active[f"{PREFIX}TOPICS"] and active[f"{PREFIX}UPLOADER"]


# -- compose: Kafka, Redis, profiles ---------------------------------------------------------------
def _bootstrap_addresses(services: dict[str, dict[str, Any]]) -> set[str]:
    """Every host:port that a batchfleet role or a Kafka tool in the stack bootstraps from."""
    found: set[str] = set()
    for svc in services.values():
        value = _environment(svc).get(f"{PREFIX}KAFKA_BOOTSTRAP_SERVERS")
        if value is not None:
            found |= {a.strip() for a in _resolve(value).split(",")}
        text = json.dumps([svc.get("command"), svc.get("healthcheck")])
        found |= set(re.findall(r"--bootstrap-server[ =]([^\s\"'\\]+)", text))
    active, _ = _env_example()
    found |= {a.strip() for a in active.get(f"{PREFIX}KAFKA_BOOTSTRAP_SERVERS", "").split(",") if a.strip()}
    return found


def test_kafka_advertises_what_the_services_bootstrap_from(services: dict[str, dict[str, Any]]) -> None:
    kafka = _server(services, "kafka", "apache/kafka")
    env = _environment(kafka)
    advertised = _listeners(env["KAFKA_ADVERTISED_LISTENERS"])
    bound = _listeners(env["KAFKA_LISTENERS"])
    protocols = dict(item.split(":", 1) for item in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    internal = env["KAFKA_INTER_BROKER_LISTENER_NAME"]
    addresses = _bootstrap_addresses(services)
    assert f"{PREFIX}KAFKA_BOOTSTRAP_SERVERS" in _environment(services["dispatcher"])
    for address in addresses:
        assert advertised.get(internal) == address, f"{address} is not the advertised {internal} listener"
    for name, address in advertised.items():
        assert name in protocols, f"listener {name} has no security protocol"
        assert bound[name].rsplit(":", 1)[1] == address.rsplit(":", 1)[1], f"{name}: bound and advertised ports differ"


def test_kafka_has_an_external_listener_for_the_host(services: dict[str, dict[str, Any]]) -> None:
    kafka = _server(services, "kafka", "apache/kafka")
    env = _environment(kafka)
    advertised = _listeners(env["KAFKA_ADVERTISED_LISTENERS"])
    external = {n: a for n, a in advertised.items() if n != env["KAFKA_INTER_BROKER_LISTENER_NAME"]}
    assert "localhost:9094" in external.values(), f"no listener advertised as localhost:9094: {advertised}"
    published = {_resolve(p).rsplit(":", 1)[-1] for p in kafka.get("ports", [])}
    assert "9094" in published, "the external listener's port is not published"
    assert "controller" in env["KAFKA_PROCESS_ROLES"] and "broker" in env["KAFKA_PROCESS_ROLES"], "not KRaft"


def test_redis_is_durable_and_never_evicts(services: dict[str, dict[str, Any]]) -> None:
    redis = _server(services, "redis", "redis:7")
    argv = [_resolve(a) for a in _argv(redis.get("command"))]
    assert argv[:1] == ["redis-server"], f"redis command {argv}"
    flags = {argv[i][2:]: argv[i + 1] for i in range(len(argv) - 1) if argv[i].startswith("--")}
    assert flags.get("appendonly") == "yes"
    assert flags.get("appendfsync") == "everysec"
    assert flags.get("maxmemory-policy") == "noeviction"
    assert flags.get("maxmemory") not in (None, "0"), "noeviction only acts under a maxmemory limit"
    assert any("/data" in str(v) for v in redis.get("volumes", [])), "the AOF must live on a volume"
    assert "redis-cli ping" in " ".join(_argv(redis["healthcheck"]["test"]))


def test_producer_profile_sends_station_messages(services: dict[str, dict[str, Any]]) -> None:
    producer = services["producer"]
    assert producer.get("profiles") == ["producer"]
    assert str(producer["image"]).startswith("apache/kafka")
    script = " ".join(_argv(producer.get("entrypoint")) + _argv(producer.get("command")))
    assert "kafka-console-producer.sh" in script
    for field in ("station_list_field", "station_id_field"):
        name = Settings.model_fields[field].default
        assert f'"{name}"' in script, f"the sample messages lack the default {field} {name!r}"


def test_monitoring_profile_scrapes_every_role(compose: dict[str, Any], fleet: dict[str, dict[str, Any]]) -> None:
    services = compose["services"]
    assert services["prometheus"].get("profiles") == ["monitoring"]
    assert services["grafana"].get("profiles") == ["monitoring"]
    mounts = {c["target"]: c["source"] for c in services["prometheus"]["configs"]}
    config = yaml.safe_load(_resolve(compose["configs"][mounts["/etc/prometheus/prometheus.yml"]]["content"]))
    targets: set[tuple[str, int]] = set()
    for job in config["scrape_configs"]:
        for sd in job.get("dns_sd_configs", []):
            targets |= {(n, int(sd["port"])) for n in sd["names"]}
        for sc in job.get("static_configs", []):
            targets |= {(t.rsplit(":", 1)[0], int(t.rsplit(":", 1)[1])) for t in sc["targets"]}
    for name, svc in fleet.items():
        port = int(_resolve(_environment(svc)[f"{PREFIX}METRICS_PORT"]))
        assert (name, port) in targets, f"prometheus does not scrape {name}:{port}"


# -- Dockerfile ------------------------------------------------------------------------------------
def test_dockerfile_is_multi_stage_on_python_slim(stages: list[list[tuple[str, str]]]) -> None:
    assert len(stages) >= 2, "single-stage Dockerfile"
    assert stages[-1][0][1].split()[0] == "python:3.11-slim"
    builders = {_stage_name(s) for s in stages[:-1]}
    copies = [args for keyword, args in stages[-1] if keyword == "COPY"]
    assert copies, "the final stage copies nothing from the builder"
    for args in copies:
        source = re.match(r"--from=(\S+)", args)
        assert source and source.group(1) in builders, f"final stage copies from outside a builder stage: {args}"


def test_dockerfile_final_stage_has_no_build_tools(stages: list[list[tuple[str, str]]]) -> None:
    tools = re.compile(r"\b(gcc|g\+\+|clang|make|build-essential|python3-dev|libc6?-dev|musl-dev)\b")
    for keyword, args in stages[-1]:
        if keyword == "RUN":
            assert not tools.search(args), f"build tools in the final stage: {args}"
            assert not re.search(r"\bpip\b", args), f"the final stage installs packages itself: {args}"


def test_dockerfile_runs_as_non_root(stages: list[list[tuple[str, str]]]) -> None:
    users = [args for keyword, args in stages[-1] if keyword == "USER"]
    assert users, "the final stage has no USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), f"runs as {users[-1]}"


def test_dockerfile_entrypoint_is_the_batchfleet_script(stages: list[list[tuple[str, str]]], pyproject: dict[str, Any]) -> None:
    entrypoint = _dockerfile_entrypoint(stages)
    scripts = pyproject["project"]["scripts"]
    assert Path(entrypoint[0]).name in scripts, f"{entrypoint[0]} is not a [project.scripts] entry"
    module, _, attr = scripts[Path(entrypoint[0]).name].partition(":")
    assert getattr(importlib.import_module(module), attr) is main, "the script is not the click group checked here"
    if "/" not in entrypoint[0]:
        path = " ".join(args for keyword, args in stages[-1] if keyword == "ENV" and "PATH" in args)
        venvs = [args.split()[-1] for keyword, args in stages[-1] if keyword == "COPY"]
        assert any(f"{v}/bin" in path for v in venvs), "the copied venv's bin/ is not on PATH"


def test_dockerfile_installs_the_project_with_core_dependencies_only(
    stages: list[list[tuple[str, str]]], pyproject: dict[str, Any]
) -> None:
    calls = [call for stage in stages[:-1] for call in _pip_calls(stage)]
    assert calls, "the builder runs no pip install/wheel"
    reqs = [r for _, rs in calls for r in rs]
    extras = set(pyproject["project"].get("optional-dependencies", {}))
    assert not [r for r in reqs if "[" in r], f"extras installed: {reqs}"
    assert not [e for e in extras if re.search(rf"\[[^\]]*\b{e}\b", DOCKERFILE.read_text(encoding="utf-8"))]
    assert "." in reqs, "the project itself (.) is never built or installed"
    name = pyproject["project"]["name"]
    installs = [rs for sub, rs in calls if sub == "install"]
    assert any(r in (".", name) or r.endswith(".whl") for rs in installs for r in rs), f"{name} is never installed"


def test_dockerfile_builds_from_every_package(stages: list[list[tuple[str, str]]], pyproject: dict[str, Any]) -> None:
    copied = {Path(src).name for s in stages[:-1] for kw, args in s if kw == "COPY" for src in args.split()[:-1]}
    packages = {p.split(".")[0] for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]}
    packages |= {link.name for link in (ROOT / "batchfleet").iterdir() if link.is_symlink()}  # the role folders it maps in
    assert "pyproject.toml" in copied
    assert packages <= copied, f"packages not copied into the builder: {sorted(packages - copied)}"


def test_workers_get_a_processor_that_loads(fleet: dict[str, dict[str, Any]], stages: list[list[tuple[str, str]]]) -> None:
    """No default processor: compose names one explicitly and mounts the folder it lives in on the
    image's PYTHONPATH; it must pass the worker's load-time check."""
    import sys

    from batchfleet.workers.processor import load_processor

    active, _ = _env_example()
    ref = _resolve(_environment(fleet["worker"])[f"{PREFIX}PROCESSOR"])
    assert ref == active[f"{PREFIX}PROCESSOR"] and ref
    pythonpath = " ".join(args for keyword, args in stages[-1] if keyword == "ENV" and "PYTHONPATH=" in args)
    mounts = {str(v).split(":")[1]: str(v).split(":")[0] for v in fleet["worker"].get("volumes", [])}
    [(target, source)] = [(t, s) for t, s in mounts.items() if t in pythonpath]
    folder = (COMPOSE_DIR / source).resolve()
    assert (folder / f"{ref.split(':')[0]}.py").is_file(), f"{ref} is not in {folder} (mounted at {target})"
    sys.path.insert(0, str(folder))
    try:
        assert callable(load_processor(ref))
    finally:
        sys.path.remove(str(folder))


# -- compose: secrets, users, binds ----------------------------------------------------------------
def test_every_batchfleet_service_has_its_own_redis_user(
    fleet: dict[str, dict[str, Any]], services: dict[str, dict[str, Any]]
) -> None:
    """Each role's URL names the ACL user of its role (batchfleet/acl.py) with its required password."""
    from batchfleet.acl import ROLES as ACL_ROLES
    from batchfleet.acl import password_variable

    assert set(fleet) == set(REDIS_USERS), f"services without a Redis user: {sorted(set(fleet) - set(REDIS_USERS))}"
    assert set(REDIS_USERS.values()) <= set(ACL_ROLES)
    for name, svc in fleet.items():
        url = _environment(svc)[f"{PREFIX}REDIS_URL"]
        role = REDIS_USERS[name]
        found = re.fullmatch(r"redis://\$\{BATCHFLEET_KEY_PREFIX:-bf\}-(\w+):\$\{(\w+):\?[^}]+\}@redis:6379/0", url)
        assert found, f"{name}: BATCHFLEET_REDIS_URL {url!r} names no ACL user with a required password"
        assert found.groups() == (role, password_variable(role)), f"{name}: uses {found.groups()}, expected {role}"
    job = services[ACL_JOB]
    job_env = _environment(job)
    for role in ACL_ROLES:
        assert ":?" in job_env[password_variable(role)], f"{ACL_JOB}: {password_variable(role)} is not required"
    assert "env_file" not in job, f"{ACL_JOB} needs the passwords only, not all of .env"
    script = " ".join(_argv(job.get("entrypoint")) + _argv(job.get("command")))
    assert "batchfleet redis-acl" in script and "--output /acl/users.acl" in script
    assert "redis-acl" in main.commands


def test_redis_loads_the_generated_users_and_admits_no_one_else(
    services: dict[str, dict[str, Any]], stages: list[list[tuple[str, str]]]
) -> None:
    redis = _server(services, "redis", "redis:7")
    argv = [_resolve(a) for a in _argv(redis.get("command"))]
    assert argv[argv.index("--aclfile") + 1] == "/acl/users.acl"
    assert "redis-acl:/acl:ro" in redis["volumes"] and "redis-acl:/acl" in services[ACL_JOB]["volumes"]
    assert redis["depends_on"][ACL_JOB]["condition"] == "service_completed_successfully"
    assert not [a for a in argv if a in ("--requirepass", "--protected-mode")], "users come from the aclfile only"
    assert "NOAUTH" in " ".join(_argv(redis["healthcheck"]["test"])), "the health check must accept NOAUTH (default user off)"
    for published in redis.get("ports", []):
        assert _resolve(published).startswith("127.0.0.1:"), f"redis published beyond loopback by default: {published}"
    runs = " ".join(args for keyword, args in stages[-1] if keyword == "RUN")
    assert re.search(r"install -d -o 10001 -g 10001 [^&]*/acl", runs), (
        "the image's /acl is not the service user's: the job cannot write it"
    )


def test_grafana_has_no_default_password(services: dict[str, dict[str, Any]]) -> None:
    value = _environment(services["grafana"])["GF_SECURITY_ADMIN_PASSWORD"]
    assert re.fullmatch(r"\$\{GRAFANA_ADMIN_PASSWORD:\?[^}]+\}", value), value
    active, commented = _env_example()
    assert "GRAFANA_ADMIN_PASSWORD" in commented and "GRAFANA_ADMIN_PASSWORD" not in active


def test_no_password_has_a_value_in_the_env_example() -> None:
    active, _ = _env_example()
    assert not [n for n in active if "PASSWORD" in n or (n.endswith("_TOKEN") and active[n])], "a password with a value to copy"


def test_metrics_and_console_listen_where_configured(fleet: dict[str, dict[str, Any]]) -> None:
    """Outside compose every listener defaults to loopback; inside, 0.0.0.0 is the container's own
    interface, and only the console is published, on the host's loopback."""
    assert Settings.model_fields["metrics_host"].default == "127.0.0.1"
    assert Settings.model_fields["web_host"].default == "127.0.0.1"
    for name, svc in fleet.items():
        env = _environment(svc)
        assert env[f"{PREFIX}METRICS_HOST"] == "0.0.0.0", f"{name}: metrics host not set for the container"
        published = [_resolve(p) for p in svc.get("ports", [])]
        metrics_port = _resolve(env[f"{PREFIX}METRICS_PORT"])
        assert not [p for p in published if p.endswith(f":{metrics_port}")], f"{name}: metrics port published"
        assert all(p.startswith("127.0.0.1:") for p in published), f"{name}: published beyond loopback: {published}"


def test_the_local_kafka_is_marked_local_only() -> None:
    text = COMPOSE_FILE.read_text(encoding="utf-8")
    assert "local use only" in text.lower()
    for name in ("BATCHFLEET_KAFKA_SECURITY_PROTOCOL", "BATCHFLEET_KAFKA_SASL_MECHANISM"):
        assert name in text, f"compose.yaml does not say how to reach a secured Kafka ({name})"
