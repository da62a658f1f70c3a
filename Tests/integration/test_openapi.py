"""docs/openapi.yaml is a valid OpenAPI 3.1 document and the server's answers (statuses and bodies) match it.
(That it lists every route is checked against the router itself, in Tests/ChatUnitTests/GatewayRouterTests.swift.)"""
from pathlib import Path

import jsonschema
import pytest
import yaml
from openapi_spec_validator import validate

from consult import Api

ROOT = Path(__file__).resolve().parents[2]
SPEC = yaml.safe_load((ROOT / "docs" / "openapi.yaml").read_text())


def test_the_document_is_valid_openapi():
    validate(SPEC)


def check(response, method, path):
    """Validates a response against the document: its status is listed, its body matches the schema."""
    operation = SPEC["paths"][path][method]
    status = str(response.status_code)
    assert status in operation["responses"], f"{method.upper()} {path} answered {status}, not in the document"
    declared = operation["responses"][status]
    if "$ref" in declared:
        declared = SPEC["components"]["responses"][declared["$ref"].split("/")[-1]]
    schema = declared["content"]["application/json"]["schema"]
    jsonschema.validate(response.json(), {**schema, "components": SPEC["components"]},
                        cls=jsonschema.Draft202012Validator, format_checker=jsonschema.FormatChecker())


def test_the_server_answers_as_documented(stack):
    api = Api(stack.url)
    shop, visitor, third = "spec-shop@example.com", "spec-visitor@example.com", "spec-third@example.com"
    r = api.call("POST", "/api/dev/token", json={"email": shop, "role": "shop"})
    check(r, "post", "/api/dev/token")
    token = r.json()["token"]
    check(api.call("POST", "/api/dev/token", json={"email": "x", "role": "shop"}), "post", "/api/dev/token")

    created = api.create_room(token, shop, visitor)
    check(created, "post", "/api/rooms")
    check(api.create_room(token, shop, visitor), "post", "/api/rooms")
    check(api.create_room(token, shop, "nope"), "post", "/api/rooms")
    check(api.create_room(token, third, visitor), "post", "/api/rooms")
    check(api.create_room(None, shop, visitor), "post", "/api/rooms")
    check(api.call("POST", "/api/rooms", token, data="{", headers={"Content-Type": "application/json"}), "post", "/api/rooms")
    check(api.call("POST", "/api/rooms", token, data="x" * 20000), "post", "/api/rooms")

    check(api.call("GET", "/api/rooms", token), "get", "/api/rooms")
    check(api.call("GET", "/api/rooms"), "get", "/api/rooms")

    room_id = created.json()["id"]
    path = "/api/rooms/{id}/messages"
    check(api.call("GET", f"/api/rooms/{room_id}/messages", token), "get", path)
    check(api.call("GET", f"/api/rooms/{room_id}/messages", token, params={"before": 5, "limit": 2}), "get", path)
    check(api.call("GET", f"/api/rooms/{room_id}/messages", api.token(third, "visitor")), "get", path)
    check(api.call("GET", "/api/rooms/99999999/messages", token), "get", path)
    check(api.call("GET", "/api/rooms/zero/messages", token), "get", path)
    check(api.call("GET", f"/api/rooms/{room_id}/messages"), "get", path)

    named = "/api/chat/{room}/messages"
    check(api.call("GET", "/api/chat/lobby/messages?limit=5"), "get", named)
    check(api.call("GET", "/api/chat/a%20b/messages"), "get", named)
    check(api.call("GET", "/api/chat/lobby/messages?before=0"), "get", named)

    check(api.call("GET", "/health"), "get", "/health")
    check(api.call("GET", "/health/ready"), "get", "/health/ready")
