"""compose/ cannot run here (no Docker engine): validate it against the Compose specification's JSON schema
(vendored by check-jsonschema, so offline), and keep it in step with the configuration the services read."""
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
    assert {"rabbitmq", "postgres", "gateway", "persistence", "rooms"} <= set(services)
    for name, binary in [("gateway", "Gateway"), ("persistence", "Persistence"), ("rooms", "Rooms")]:
        assert services[name]["command"] == [f"/app/{binary}"]
        assert services[name]["build"]["dockerfile"] == "compose/Dockerfile"
    dockerfile = (ROOT / "compose" / "Dockerfile").read_text()
    for binary in ("Gateway", "Persistence", "Rooms"):
        assert f"--product {binary}" in dockerfile


def test_compose_sets_only_variables_the_services_read_and_the_essential_ones():
    services = COMPOSE["services"]
    for name, source in [("gateway", "Services/Gateway"), ("persistence", "Services/Persistence"), ("rooms", "Services/Rooms")]:
        read = variables_read_by(source) | {"CHAT_LOG_LEVEL"}
        env = set(services[name]["environment"])
        assert env <= read, f"{name} sets variables no code reads: {env - read}"
        assert "CHAT_AMQP_URL" in env
    for name in ("persistence", "rooms"):
        assert services[name]["environment"]["CHAT_DATABASE_URL"].startswith("postgres://")
        assert services[name]["environment"]["CHAT_HEALTH_HOST"] == "0.0.0.0"
    assert services["gateway"]["environment"]["CHAT_GATEWAY_HOST"] == "0.0.0.0"


def test_readme_documents_every_variable_the_services_read():
    readme = (ROOT / "README.md").read_text()
    every = variables_read_by("Services") | variables_read_by("Shared")
    missing = sorted(v for v in every if v not in readme)
    assert not missing, f"README.md does not document {missing}"
