"""docker-compose.yml, checked offline (no Docker engine runs here): it validates against the
Compose specification's JSON schema, pins every image, references only files that exist, wires
health and completion conditions, takes credentials from the environment, and every command is
one of the project's real entry points as `sentinel`'s click parser resolves it."""
from __future__ import annotations

import copy
import json
import re
import shlex
from importlib.resources import files

import click
import jsonschema
import pytest
import yaml

from fixtures.bi import REPO

COMPOSE = REPO / "docker-compose.yml"
INIT_SCRIPT = REPO / "deploy" / "init-engine.sh"
ENGINES = ("risingwave", "materialize", "postgres")
CONTAINER_WORKDIR = "/app"  # Dockerfile's WORKDIR, where the repository's files are copied


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def compose_schema() -> dict:
    """The Compose specification's schema, as vendored by check-jsonschema (from SchemaStore)."""
    return json.loads(files("check_jsonschema.builtin_schemas.vendor").joinpath("compose-spec.json").read_text())


def validate(doc: dict) -> list[str]:
    schema = compose_schema()
    validator = jsonschema.validators.validator_for(schema)(schema)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]


def interpolated(value: str, env: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default}, ${VAR:?error} interpolation (enough for this file)."""
    def sub(m: re.Match) -> str:
        name, op, arg = m.group(1), m.group(2), m.group(3) or ""
        if op == ":-":
            return env.get(name) or arg
        if op == ":?":
            if not env.get(name):
                raise KeyError(f"{name}: {arg}")
            return env[name]
        return env.get(name, "")
    return re.sub(r"\$\{([A-Z0-9_]+)(?:(:[-?])([^}]*))?\}", sub, value)


def test_validates_against_the_compose_specification() -> None:
    assert validate(compose()) == []


def test_the_validation_catches_mistakes() -> None:
    broken = copy.deepcopy(compose())
    broken["services"]["loader"]["depends_on"]["risingwave-init"]["condition"] = "service_done"
    broken["services"]["grafana"]["healthchek"] = {}
    errors = validate(broken)
    assert any("service_done" in e for e in errors) and any("healthchek" in e for e in errors)


def test_every_image_is_pinned() -> None:
    for name, service in compose()["services"].items():
        image = service["image"]
        repo, _, tag = image.rpartition(":")
        assert repo and tag and tag != "latest" and "$" not in image, f"{name}: image {image!r} is not pinned"
        assert re.search(r"\d", tag), f"{name}: tag {tag!r} names no version"
    dockerfile = (REPO / "Dockerfile").read_text()
    bases = re.findall(r"^FROM\s+(\S+)", dockerfile, flags=re.M)
    assert bases and all(":" in b and not b.endswith(":latest") for b in bases)


def test_profiles_each_run_a_whole_stack() -> None:
    services = compose()["services"]
    by_profile: dict[str, set[str]] = {}
    for name, service in services.items():
        for profile in service.get("profiles", ["(default)"]):
            by_profile.setdefault(profile, set()).add(name)
    assert by_profile["(default)"] == {"risingwave", "risingwave-init", "loader", "alerts", "grafana"}
    assert by_profile["materialize"] == {f"materialize{s}" for s in ("", "-init", "-loader", "-alerts", "-grafana")}
    assert by_profile["postgres"] == {f"postgres{s}" for s in ("", "-init", "-loader", "-alerts", "-grafana")}
    for name, service in services.items():
        profiles = set(service.get("profiles", []))
        for dep in service.get("depends_on", {}):
            assert set(services[dep].get("profiles", [])) == profiles, f"{name} depends on {dep} across profiles"


def test_health_and_completion_conditions() -> None:
    services = compose()["services"]
    engines = {"risingwave", "materialize", "postgres"}
    for engine in engines:
        assert services[engine]["healthcheck"]["test"][0] in ("CMD", "CMD-SHELL")
        assert services[f"{engine}-init"]["depends_on"] == {engine: {"condition": "service_healthy"}}
        assert services[f"{engine}-init"]["restart"] == "no"
    for name, service in services.items():
        if name in engines or name.endswith("-init"):
            continue
        init = next(f"{e}-init" for e in engines if e == name.split("-")[0]) if "-" in name else "risingwave-init"
        assert service["depends_on"] == {init: {"condition": "service_completed_successfully"}}, name
    for name in ("grafana", "materialize-grafana", "postgres-grafana"):
        assert "healthcheck" in services[name]


def test_named_volumes_hold_the_state() -> None:
    doc = compose()
    declared = set(doc["volumes"])
    used = set()
    for name, service in doc["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith((".", "/")):
                used.add(source)
    assert used == declared
    for engine, path in (("risingwave", "/root/.risingwave"), ("materialize", "/mzdata"),
                         ("postgres", "/var/lib/postgresql/data")):
        assert any(v.endswith(f":{path}") for v in doc["services"][engine]["volumes"]), engine


def test_credentials_come_from_the_environment() -> None:
    text = COMPOSE.read_text()
    for var in ("SENTINEL_LOADER_PASSWORD", "SENTINEL_ANALYST_PASSWORD", "SENTINEL_OWNER_PASSWORD",
                "GRAFANA_ADMIN_PASSWORD"):
        uses = re.findall(r"\$\{" + var + r"(:[-?][^}]*)?\}", text)
        assert uses and all(u.startswith(":?") for u in uses), f"{var} must be required, never defaulted"
    for name, service in compose()["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if "PASSWORD" in key and value:
                assert str(value).startswith("${"), f"{name}: {key} is a literal"
    example = (REPO / "deploy" / "env.example").read_text()
    for var in set(re.findall(r"\$\{([A-Z0-9_]+)", text)):
        assert re.search(rf"^{var}=", example, flags=re.M), f"{var} missing from deploy/env.example"


def test_every_referenced_file_exists() -> None:
    doc = compose()
    for name, service in doc["services"].items():
        build = service.get("build")
        if build:
            assert (REPO / build["context"] / build.get("dockerfile", "Dockerfile")).is_file()
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (REPO / source).exists(), f"{name}: {source} does not exist"
    for path in re.findall(r"^COPY\s+(\S+)", (REPO / "Dockerfile").read_text(), flags=re.M):
        assert (REPO / path).exists(), f"Dockerfile copies {path}, which does not exist"
    provisioning = REPO / "deploy" / "grafana" / "provisioning"
    datasource = yaml.safe_load((provisioning / "datasources" / "sentinel.yaml").read_text())["datasources"][0]
    assert datasource["user"] == "sentinel_analyst" and datasource["uid"] == "sentinel"
    assert datasource["secureJsonData"]["password"] == "$SENTINEL_ANALYST_PASSWORD"
    provider = yaml.safe_load((provisioning / "dashboards" / "sentinel.yaml").read_text())["providers"][0]
    mounted = {v.split(":")[1]: v.split(":")[0] for v in doc["services"]["grafana"]["volumes"] if v.startswith(".")}
    assert (REPO / mounted[provider["options"]["path"]] / "sentinel-live-fraud.json").is_file()
    dockerignore = (REPO / ".dockerignore").read_text().split()
    assert ".env" in dockerignore and ".venv" in dockerignore


def _entry_points() -> list[tuple[str, list[str], dict[str, str]]]:
    """(service, argv, environment) of every command compose runs, the init script's included."""
    env = {"SENTINEL_LOADER_PASSWORD": "x", "SENTINEL_ANALYST_PASSWORD": "x", "SENTINEL_OWNER_PASSWORD": "x",
           "GRAFANA_ADMIN_PASSWORD": "x"}
    found = []
    for name, service in compose()["services"].items():
        command = service.get("command")
        if command is None or "image" in service and not service["image"].startswith("sentinel:"):
            continue
        argv = [interpolated(str(a), env) for a in command]
        service_env = {k: interpolated(str(v), env) for k, v in (service.get("environment") or {}).items()}
        found.append((name, argv, service_env))
    return found


def _resolve_sentinel(argv: list[str]) -> click.Command:
    """Resolve `sentinel ...` through the real click group, parsing every option and argument."""
    from sentinel.cli import cli

    assert argv[0] == "sentinel"
    ctx = cli.make_context("sentinel", list(argv[1:]), resilient_parsing=False)
    with ctx:
        name, command, rest = cli.resolve_command(ctx, ctx.protected_args + ctx.args)
        sub = command.make_context(name, rest, parent=ctx)
        assert not sub.args, f"unexpected arguments {sub.args}"
    return command


@pytest.mark.parametrize(("service", "argv", "env"), _entry_points(), ids=lambda v: v if isinstance(v, str) else "")
def test_commands_run_real_entry_points(service: str, argv: list[str], env: dict[str, str]) -> None:
    if argv[0] == "sentinel":
        _resolve_sentinel(argv)
        return
    assert argv[:2] == ["sh", "deploy/init-engine.sh"], f"{service}: {argv}"
    assert (REPO / argv[1]).is_file()
    assert env["SENTINEL_ENGINE"] in ENGINES and env["SENTINEL_ENGINE"] == service.removesuffix("-init")
    commands = [line.strip() for line in INIT_SCRIPT.read_text().splitlines() if line.strip().startswith("sentinel ")]
    assert commands, "the init script runs no sentinel command"
    for command in commands:
        words = shlex.split(command.replace("$engine", env["SENTINEL_ENGINE"]))
        assert _resolve_sentinel(words).name == "up"


def test_every_sentinel_service_has_its_command_checked() -> None:
    """The parametrized check above covers each service of the sentinel image (none left out by a
    missing `command`, which would shrink it silently)."""
    ours = {name for name, service in compose()["services"].items() if service["image"].startswith("sentinel:")}
    assert ours and {name for name, _, _ in _entry_points()} == ours


def test_dbt_targets_and_sql_exist_for_each_engine() -> None:
    profiles = yaml.safe_load((REPO / "dbt" / "profiles.yml").read_text())
    outputs = profiles["sentinel"]["outputs"]
    services = compose()["services"]
    for engine in ("risingwave", "materialize"):
        assert engine in outputs, f"dbt/profiles.yml has no {engine} target"
        assert sorted(p.name for p in (REPO / "sql" / engine).glob("*.sql")) == [
            "010_source.sql", "040_alerts.sql", "090_roles.sql"]
        env = services[f"{engine}-init"]["environment"]
        used = set(re.findall(r"env_var\('([A-Z_]+)'", json.dumps(outputs[engine])))
        given = {k for k in env if k in used}
        assert {v for v in used if v.endswith(("HOST", "PORT", "USER"))} <= given, f"{engine}: {used - given}"


def test_init_script_is_valid_sh() -> None:
    import subprocess

    subprocess.run(["sh", "-n", str(INIT_SCRIPT)], check=True)
    text = INIT_SCRIPT.read_text()
    assert 'sentinel up --engine "$engine"' in text
    assert "set -eu" in text and "ON_ERROR_STOP=1" in text
