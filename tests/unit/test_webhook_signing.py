"""The signing and the retry schedule of webhooks, without servers: signatures verify with the
``standardwebhooks`` package receivers use; back-off doubles, is capped, jittered, and keeps an
event retried for at least the window; the endpoint settings refuse nonsense."""

from __future__ import annotations

import json
import time
import uuid

import pytest
from pydantic import ValidationError
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from messaging.settings import Settings
from messaging.webhook_signing import gives_up, headers, retry_delay, schedule, webhook_id
from tests.support.webhooks import SECRET, new_secret

KEY = Webhook(SECRET)._whsecret  # the package's own decoding of the secret


def test_a_signature_verifies_with_the_standardwebhooks_package() -> None:
    body = json.dumps({"type": "message.created", "timestamp": "x", "data": {}}).encode()
    msg_id = webhook_id(uuid.uuid4())
    sent = headers(KEY, msg_id=msg_id, timestamp=int(time.time()), body=body)
    assert Webhook(SECRET).verify(body, sent) == json.loads(body)
    assert sent["webhook-signature"].startswith("v1,")


def test_a_tampered_body_or_another_secret_fails_verification() -> None:
    body = b'{"type":"message.read","timestamp":"x","data":{}}'
    sent = headers(KEY, msg_id="msg_1", timestamp=int(time.time()), body=body)
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(body.replace(b"read", b"gone"), sent)
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(body, sent)


def test_the_webhook_id_depends_only_on_the_delivery() -> None:
    delivery = uuid.uuid4()
    assert webhook_id(delivery) == webhook_id(delivery) == f"msg_{delivery.hex}"


def test_back_off_doubles_up_to_the_cap_and_jitter_keeps_at_least_half() -> None:
    steps = [retry_delay(n, base=5, cap=3600, jitter=0.999999) for n in range(1, 12)]
    assert steps[:4] == pytest.approx([5, 10, 20, 40], rel=1e-5)
    assert max(steps) == pytest.approx(3600, rel=1e-5)
    for n in range(1, 12):
        low = retry_delay(n, base=5, cap=3600, jitter=0.0)
        high = retry_delay(n, base=5, cap=3600, jitter=0.999999)
        assert low == pytest.approx(high / 2, rel=1e-5)
    assert retry_delay(10_000, base=5, cap=60, jitter=0.5) == 45.0  # no overflow


def test_a_failing_event_is_retried_for_at_least_the_window() -> None:
    times = schedule(base=5, cap=3600, window=86_400)
    assert times[-2] < 86_400 <= times[-1]
    assert not gives_up(age_seconds=86_399, window_seconds=86_400)
    assert gives_up(age_seconds=86_400, window_seconds=86_400)


def test_endpoints_are_read_as_the_operator_writes_them(monkeypatch: pytest.MonkeyPatch) -> None:
    secret = new_secret()
    monkeypatch.setenv("MESSAGING_WEBHOOK_0_SECRET", secret)
    monkeypatch.setenv(
        "MESSAGING_WEBHOOKS",
        json.dumps(
            [
                {
                    "url": "https://hooks.example.com/in",
                    "secretEnv": "MESSAGING_WEBHOOK_0_SECRET",
                    "events": ["message.created"],
                }
            ]
        ),
    )
    [hook] = Settings().webhooks
    assert hook.url == "https://hooks.example.com/in"
    assert hook.secret.get_secret_value() == secret
    assert hook.events == ["message.created"]
    assert Webhook(secret)._whsecret == hook.key


@pytest.mark.parametrize(
    ("hook", "problem"),
    [
        ({"url": "https://h/x", "secret": "not-whsec"}, "whsec_"),
        ({"url": "https://h/x", "secret": "whsec_!!!"}, "base64"),
        ({"url": "https://h/x", "secretEnv": "MESSAGING_NOT_SET_ANYWHERE"}, "is not set"),
        ({"url": "ftp://h/x", "secret": SECRET}, "url"),
        ({"url": "https://h/x", "secret": SECRET, "events": ["message.exploded"]}, "events"),
    ],
)
def test_nonsense_endpoints_fail_at_start_up(hook: dict[str, object], problem: str) -> None:
    with pytest.raises(ValidationError, match=problem):
        Settings(webhooks=[hook])


def test_a_lease_shorter_than_the_timeout_is_refused() -> None:
    with pytest.raises(ValidationError, match="lease"):
        Settings(webhook_timeout_seconds=30, webhook_lease_seconds=10)
