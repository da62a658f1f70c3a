"""The offline checks of compose/ (Tests/containers runs it on podman): valid against the Compose
specification's JSON schema (vendored by check-jsonschema, so offline), and in step with the configuration
the services read."""
import json
import re
from pathlib import Path

import check_jsonschema
import jsonschema
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "compose" / "compose.yaml").read_text())


def schema():
    path = Path(check_jsonschema.__file__).parent / "builtin_schemas" / "vendor" / "compose-spec.json"
    return json.loads(path.read_text())


def variables_read_by(target_dir):
    sources = "".join(p.read_text() for p in (ROOT / target_dir).rglob("*.swift"))
    return set(re.findall(r'env\.(?:string|int|bool|choice)\("(CHAT_[A-Z_]+)"', sources))


def test_compose_file_is_valid_against_the_compose_spec():
    jsonschema.validate(COMPOSE, schema())


def test_compose_runs_every_service_in_its_own_container():
    services = COMPOSE["services"]
    assert {"rabbitmq", "postgres", "nginx", "prometheus", "gateway", "persistence", "rooms"} <= set(services)
    for name in ("gateway", "persistence", "rooms"):
        assert services[name]["build"]["dockerfile"] == "compose/Dockerfile"
        assert services[name]["build"]["target"] == name
        assert services[name]["restart"] == "unless-stopped" and "healthcheck" in services[name]
    dockerfile = (ROOT / "compose" / "Dockerfile").read_text()
    for binary in ("Gateway", "Persistence", "Rooms"):
        assert f"--product {binary}" in dockerfile
    # Every folder Package.swift declares targets in is copied into the build stage.
    for folder in ("Shared", "Services", "Benchmarks", "Tests"):
        assert f"COPY {folder} " in dockerfile
    # Only nginx publishes a port (the gateways scale behind it).
    assert [name for name, s in services.items() if s.get("ports")] == ["nginx"]


def test_compose_sets_only_variables_the_services_read_and_the_essential_ones():
    shared = set(COMPOSE["x-chat-environment"])
    read = {name: variables_read_by(source) | {"CHAT_LOG_LEVEL", "CHAT_LOG_FORMAT"}
            for name, source in [("gateway", "Services/Gateway"), ("persistence", "Services/Persistence"), ("rooms", "Services/Rooms")]}
    assert shared <= set().union(*read.values()), f"x-chat-environment sets variables no service reads: {shared - set().union(*read.values())}"
    for name in read:
        env = COMPOSE["services"][name]["environment"]
        assert shared <= set(env), f"{name} does not take the shared settings"
        own = {k for k in env if k not in shared}
        assert own <= read[name], f"{name} sets variables it does not read: {own - read[name]}"
        assert "CHAT_AMQP_URL" in env
    assert COMPOSE["x-chat-environment"]["CHAT_DATABASE_URL"].startswith("postgres://")
    assert COMPOSE["x-chat-environment"]["CHAT_HEALTH_HOST"] == "0.0.0.0"
    assert COMPOSE["x-chat-environment"]["CHAT_GATEWAY_HOST"] == "0.0.0.0"
    assert ":?" in COMPOSE["x-chat-environment"]["CHAT_JWT_SECRET"], "CHAT_JWT_SECRET must be required"


def test_readme_documents_every_variable_the_services_read():
    readme = (ROOT / "README.md").read_text()
    every = variables_read_by("Services") | variables_read_by("Shared")
    missing = sorted(v for v in every if v not in readme)
    assert not missing, f"README.md does not document {missing}"
