"""The AsyncAPI document: generated from the payload models, current, complete and valid.

Valid three ways: every ``$ref`` resolves, the AsyncAPI initiative's own parser (npm
``@asyncapi/parser``: the spec's JSON Schema and its rules) accepts it and refuses a broken copy,
and its payload schemas accept what the service really sends and refuse what it refuses.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from messaging import contract
from messaging.errors import ACK_CODES

ROOT = Path(__file__).resolve().parents[2]
NODE = ROOT / "tests" / "node"
VALIDATE = NODE / "asyncapi_validate.mjs"


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(contract.ASYNCAPI_OUTPUT.read_text())
    return loaded


def _validate_with_the_asyncapi_parser(path: Path) -> subprocess.CompletedProcess[str]:
    node = shutil.which("node")
    assert node is not None
    assert (NODE / "node_modules" / "@asyncapi" / "parser").exists(), "run `npm ci` in tests/node"
    return subprocess.run(
        [node, str(VALIDATE), str(path)], cwd=NODE, capture_output=True, text=True, check=False,
        timeout=120,
    )  # fmt: skip


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return own + [ref for value in node.values() for ref in _refs(value)]
    if isinstance(node, list):
        return [ref for item in node for ref in _refs(item)]
    return []


def _resolve(document: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), f"{ref}: only local references are expected"
    target: Any = document
    for raw in ref[2:].split("/"):
        part = raw.replace("~1", "/").replace("~0", "~")
        assert isinstance(target, dict) and part in target, f"{ref} does not resolve"
        target = target[part]
    if isinstance(target, dict) and set(target) == {"$ref"}:
        return _resolve(document, target["$ref"])  # a channel's message points at a component
    return target


def test_the_checked_in_asyncapi_document_is_generated_from_the_current_models() -> None:
    assert contract.ASYNCAPI_OUTPUT.read_text() == contract.render_asyncapi(), (
        "run `python -m messaging.contract` and commit clients/asyncapi/"
    )


def test_every_event_of_the_contract_is_an_operation_with_its_message_and_ack(
    document: dict[str, Any],
) -> None:
    operations = document["operations"]
    for event in contract.CLIENT_EVENTS:
        operation = operations[f"client.{event}"]
        assert operation["action"] == "receive"
        (request,) = operation["messages"]
        assert _resolve(document, request["$ref"])["name"] == event
        (ack,) = operation["reply"]["messages"]
        assert "Ack" in ack["$ref"]
    for event in contract.SERVER_EVENTS:
        operation = operations[f"server.{event}"]
        assert operation["action"] == "send"
        (message,) = operation["messages"]
        assert _resolve(document, message["$ref"])["name"] == event
    named = {key.split(".", 1)[1] for key in operations}
    assert named == {*contract.CLIENT_EVENTS, *contract.SERVER_EVENTS, "connect_error"}
    codes = document["components"]["schemas"]["ErrorCode"]["enum"]
    assert codes == sorted(ACK_CODES)


def test_every_reference_in_the_document_resolves(document: dict[str, Any]) -> None:
    refs = _refs(document)
    assert len(refs) > 100
    for ref in refs:
        _resolve(document, ref)


def test_the_asyncapi_parser_accepts_the_document() -> None:
    done = _validate_with_the_asyncapi_parser(contract.ASYNCAPI_OUTPUT)
    assert done.returncode == 0, done.stdout + done.stderr
    operations = json.loads(done.stdout.strip().splitlines()[-1])["operations"]
    assert "client.sendMessage" in operations
    assert "server.newMessage" in operations


def test_the_asyncapi_parser_refuses_a_document_with_a_dangling_reference(tmp_path: Path) -> None:
    broken = contract.render_asyncapi().replace(
        "$ref: '#/components/schemas/SendMessageRequest'",
        "$ref: '#/components/schemas/NoSuchSchema'",
    )
    assert broken != contract.render_asyncapi()
    path = tmp_path / "broken.asyncapi.yaml"
    path.write_text(broken)
    done = _validate_with_the_asyncapi_parser(path)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "NoSuchSchema" in done.stdout


def _validator(document: dict[str, Any], message: str) -> jsonschema.Draft202012Validator:
    payload = document["components"]["messages"][message]["payload"]
    return jsonschema.Draft202012Validator(
        {**payload, "components": document["components"]},
        format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER,
    )


MESSAGE: dict[str, Any] = {
    "id": "01930000-0000-7000-8000-000000000001",
    "conversationId": "01930000-0000-7000-8000-000000000002",
    "authorId": "alice",
    "content": "hi",
    "status": "sent",
    "createdAt": "2026-01-01T00:00:00.000Z",
    "clientMessageId": None,
    "editedAt": None,
    "deletedAt": None,
    "reactions": {},
    "attachments": [],
}


@pytest.mark.parametrize(
    ("message", "payload", "valid"),
    [
        ("sendMessageRequest", {"conversationId": MESSAGE["conversationId"], "content": "h"}, True),
        ("sendMessageRequest", {"conversationId": "not-a-uuid", "content": "hi"}, False),
        ("sendMessageRequest", {"conversationId": MESSAGE["conversationId"], "content": 1}, False),
        ("sendMessageRequest", {"conversationId": MESSAGE["conversationId"], "x": 1}, False),
        ("sendMessageRequest", {"content": "hi"}, False),
        ("sendMessageRequest",
         {"conversationId": MESSAGE["conversationId"], "content": "x" * 2001}, False),
        ("createConversationRequest", {"participantId": "bob"}, True),
        ("createConversationRequest", {"participantIds": ["bob"], "title": "team"}, True),
        ("createConversationRequest", {}, False),
        ("markDeliveredRequest", {"messageIds": []}, False),
        ("sendMessageAck", {"ok": True, "data": MESSAGE}, True),
        ("sendMessageAck", {"ok": True, "data": {**MESSAGE, "status": "lost"}}, False),
        ("sendMessageAck",
         {"ok": False, "error": {"code": "RATE_LIMITED", "message": "slow down",
                                 "details": {"retryAfterMs": 100}}}, True),
        ("sendMessageAck", {"ok": False, "error": {"code": "TEAPOT", "message": "x"}}, False),
        ("newMessageEvent", {**MESSAGE, "syncToken": "t"}, True),
        ("newMessageEvent", MESSAGE, False),
        ("sessionExpiredEvent", {}, True),
        ("connectError", {"message": "refused",
                          "data": {"code": "UNAUTHORIZED", "message": "bad token"}}, True),
    ],
)  # fmt: skip
def test_the_payload_schemas_accept_what_the_service_accepts_and_refuse_the_rest(
    document: dict[str, Any], message: str, payload: dict[str, Any], valid: bool
) -> None:
    errors = list(_validator(document, message).iter_errors(payload))
    assert (not errors) == valid, [error.message for error in errors]
