"""The verification snippets of docs/webhooks.md work: the Python one (with the
``standardwebhooks`` package) and the JavaScript one (Node.js, no package) accept a request the
service signs, and the JavaScript one refuses a tampered body."""

from __future__ import annotations

import json
import re
import subprocess
import time
import uuid
from pathlib import Path

from standardwebhooks.webhooks import Webhook

from messaging.webhook_signing import headers, webhook_id
from tests.support.webhooks import SECRET

DOC = (Path(__file__).parents[2] / "docs" / "webhooks.md").read_text()
BODY = json.dumps({"type": "message.read", "timestamp": "2026-12-02T03:00:00.000Z", "data": {}})


def _snippet(language: str) -> str:
    match = re.search(rf"```{language}\n(.*?)```", DOC, re.S)
    assert match, f"no {language} block in docs/webhooks.md"
    return match.group(1)


def _signed() -> dict[str, str]:
    key = Webhook(SECRET)._whsecret
    return headers(
        key, msg_id=webhook_id(uuid.uuid4()), timestamp=int(time.time()), body=BODY.encode()
    )


def test_the_python_snippet_verifies_a_signed_request() -> None:
    code = _snippet("python")
    assert len([line for line in code.splitlines() if line.strip()]) == 3
    scope = {"secret": SECRET, "body": BODY.encode(), "headers": _signed()}
    exec(code, scope)  # noqa: S102 - the documentation's own three lines
    assert scope["event"] == json.loads(BODY)


def _node_accepts(raw_body: str) -> bool:
    code = _snippet("js")
    assert len([line for line in code.splitlines() if line.strip()]) == 3
    program = (
        f"const secret = {json.dumps(SECRET)}; const h = {json.dumps(_signed())};"
        f" const rawBody = {json.dumps(raw_body)};\n{code}\nprocess.stdout.write(String(ok));"
    )
    done = subprocess.run(["node", "-e", program], capture_output=True, text=True, check=True)
    return done.stdout == "true"


def test_the_javascript_snippet_accepts_a_signed_request_and_refuses_a_tampered_one() -> None:
    assert _node_accepts(BODY)
    assert not _node_accepts(BODY.replace("read", "gone"))
