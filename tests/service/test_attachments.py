"""Attachments: bytes go straight to the object store and back, through presigned URLs only.

Each test runs on both stores (versitygw, a real S3-compatible server built from Go modules by
hack/s3-server.sh; and the local disk store `messaging dev` serves itself) and on both databases.
Clients are python-socketio devices and a plain HTTP client (httpx) for the PUT and GET, as a
browser or app would make them.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import grpc
import httpx
import pytest
import pytest_asyncio
from sqlalchemy import func, select

from messaging.dev_connections import ConnectionGraph
from messaging.objectstore import ObjectStoreUnavailable, S3ObjectStore
from messaging.proto.messaging.v1 import messaging_pb2 as pb
from messaging.proto.messaging.v1 import messaging_pb2_grpc as pb_grpc
from messaging.tables import attachments, messages
from tests.service.test_other_clients import node
from tests.support.servers import S3Server
from tests.support.service import (
    Device,
    RunningService,
    devices,
    open_conversation,
    running_service,
    service_settings,
    unique,
)

MIB = 1 << 20


@pytest.fixture(scope="session", params=["s3", "local"])
def object_store_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest_asyncio.fixture(scope="session")
async def att_svc(
    database_url: str, backend: str, object_store_kind: str, request: pytest.FixtureRequest
) -> AsyncIterator[RunningService]:
    overrides: dict[str, Any] = {
        "attachments_backend": object_store_kind,
        "attachments_max_bytes": 2 * MIB,
    }
    if object_store_kind == "s3":
        server: S3Server = request.getfixturevalue("s3_server")
        bucket = f"attachments-{uuid.uuid4().hex[:8]}"
        creating = S3ObjectStore(
            bucket=bucket,
            region=server.region,
            endpoint_url=server.endpoint_url,
            access_key_id=server.access_key_id,
            secret_access_key=server.secret_access_key,
        )
        await creating.start()
        await creating.ensure_bucket()
        await creating.close()
        overrides |= {
            "s3_endpoint_url": server.endpoint_url,
            "s3_bucket": bucket,
            "s3_region": server.region,
            "s3_access_key_id": server.access_key_id,
            "s3_secret_access_key": server.secret_access_key,
            # Clients reach the store under another name than the service does.
            "s3_public_url": server.endpoint_url.replace("127.0.0.1", "localhost"),
        }
    settings = service_settings(database_url, **overrides)
    async with running_service(settings, ConnectionGraph(), backend) as running:
        yield running


@pytest_asyncio.fixture(scope="session")
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as client:
        yield client


async def _pair(svc: RunningService) -> tuple[str, str]:
    alice, bob = unique("alice"), unique("bob")
    svc.connect_users((alice, bob))
    return alice, bob


def _upload_request(conversation: str, data: bytes, **fields: Any) -> dict[str, Any]:
    return {
        "conversationId": conversation,
        "fileName": "photo of the cat.png",
        "contentType": "image/png",
        "sizeBytes": len(data),
    } | fields


async def _put(http: httpx.AsyncClient, upload: dict[str, Any], data: bytes) -> httpx.Response:
    assert upload["uploadMethod"] == "PUT"
    return await http.put(upload["uploadUrl"], content=data, headers=upload["uploadHeaders"])


async def _uploaded(
    device: Device, http: httpx.AsyncClient, conversation: str, data: bytes, **fields: Any
) -> str:
    """createUpload, then the PUT a client makes: returns the attachment id."""
    upload = await device.ok("createUpload", _upload_request(conversation, data, **fields))
    response = await _put(http, upload, data)
    assert response.status_code == 200, response.text
    return str(upload["attachmentId"])


def _refused(reply: Any) -> Any:
    assert reply["ok"] is False, reply
    assert reply["error"]["code"] == "VALIDATION_FAILED", reply
    return reply["error"]


async def _stored_messages(svc: RunningService, conversation: str) -> int:
    async with svc.service.chat.engine.connect() as conn:
        count = await conn.scalar(
            select(func.count())
            .select_from(messages)
            .where(messages.c.conversation_id == uuid.UUID(conversation))
        )
    return int(count or 0)


def _key(svc: RunningService, conversation: str, attachment_id: str) -> str:
    return f"{conversation}/{attachment_id}"


async def _object_size(svc: RunningService, conversation: str, attachment_id: str) -> int | None:
    assert svc.service.attachments is not None
    found = await svc.service.attachments.store.stat(_key(svc, conversation, attachment_id))
    return None if found is None else found.size


def _tampered(url: str, **params: str) -> str:
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query)) | params
    return urlunsplit(parts._replace(query=urlencode(query)))


# --- the round trip ------------------------------------------------------------------------------


async def test_a_file_goes_to_the_store_and_back_byte_for_byte_through_signed_urls(
    att_svc: RunningService, http: httpx.AsyncClient
) -> None:
    alice, bob = await _pair(att_svc)
    data = os.urandom(MIB + 12_345)
    async with devices(att_svc, alice, bob) as [a, b]:
        conversation = await open_conversation(att_svc, a, bob)
        attachment_id = await _uploaded(a, http, conversation, data)
        sent = await a.ok(
            "sendMessage", {"conversationId": conversation, "attachmentIds": [attachment_id]}
        )
        live = await b.next("newMessage")
        synced = await b.ok("syncMessages", {})
    assert sent["content"] == ""
    [attachment] = sent["attachments"]
    assert {k: attachment[k] for k in ("id", "fileName", "contentType", "sizeBytes")} == {
        "id": attachment_id,
        "fileName": "photo of the cat.png",
        "contentType": "image/png",
        "sizeBytes": len(data),
    }
    assert attachment["urlExpiresAt"].endswith("Z")
    if att_svc.settings.s3_public_url:  # URLs name the public endpoint; the service HEADs its own
        assert attachment["url"].startswith(att_svc.settings.s3_public_url + "/")
    [synced_message] = synced["messages"]
    for seen in (sent, live, synced_message):
        [shown] = seen["attachments"]
        response = await http.get(shown["url"])
        assert response.status_code == 200, response.text
        assert hashlib.sha256(response.content).digest() == hashlib.sha256(data).digest()
        assert response.headers["content-type"].startswith("image/png")
        assert "cat.png" in response.headers["content-disposition"]


async def test_history_over_grpc_carries_attachments_with_download_urls(
    att_svc: RunningService, http: httpx.AsyncClient
) -> None:
    alice, bob = await _pair(att_svc)
    data = b"%PDF-1.7 a small document\n" * 100
    async with devices(att_svc, alice) as [a]:
        conversation = await open_conversation(att_svc, a, bob)
        attachment_id = await _uploaded(
            a, http, conversation, data, fileName="report.pdf", contentType="application/pdf"
        )
        await a.ok(
            "sendMessage",
            {
                "conversationId": conversation,
                "content": "the report",
                "attachmentIds": [attachment_id],
            },
        )
    async with grpc.aio.insecure_channel(att_svc.grpc_target) as channel:
        stub = pb_grpc.MessagingServiceStub(channel)
        reply = await stub.GetMessageHistory(
            pb.GetMessageHistoryRequest(conversation_id=conversation),
            metadata=[("authorization", f"Bearer {att_svc.token(bob)}")],
        )
        # Someone outside the conversation gets no message, so no download URL.
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.GetMessageHistory(
                pb.GetMessageHistoryRequest(conversation_id=conversation),
                metadata=[("authorization", f"Bearer {att_svc.token(unique('carol'))}")],
            )
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    [message] = reply.messages
    [attachment] = message.attachments
    assert (attachment.id, attachment.file_name, attachment.size_bytes) == (
        attachment_id,
        "report.pdf",
        len(data),
    )
    assert attachment.url_expires_at.ToDatetime(UTC) > datetime.now(UTC)
    response = await http.get(attachment.url)
    assert response.status_code == 200
    assert response.content == data


async def test_each_read_signs_the_download_url_afresh(
    att_svc: RunningService, http: httpx.AsyncClient
) -> None:
    alice, bob = await _pair(att_svc)
    async with devices(att_svc, alice, bob) as [a, b]:
        conversation = await open_conversation(att_svc, a, bob)
        attachment_id = await _uploaded(a, http, conversation, b"hello", contentType="text/plain")
        await a.ok(
            "sendMessage", {"conversationId": conversation, "attachmentIds": [attachment_id]}
        )
        first = (await b.ok("syncMessages", {}))["messages"][0]["attachments"][0]
        await asyncio.sleep(1.1)  # signatures carry whole seconds
        second = (await b.ok("syncMessages", {}))["messages"][0]["attachments"][0]
    assert second["urlExpiresAt"] > first["urlExpiresAt"]
    assert second["url"] != first["url"]


async def test_a_repeated_send_with_attachments_returns_the_original(
    att_svc: RunningService, http: httpx.AsyncClient
) -> None:
    alice, bob = await _pair(att_svc)
    async with devices(att_svc, alice) as [a]:
        conversation = await open_conversation(att_svc, a, bob)
        attachment_id = await _uploaded(a, http, conversation, b"\x89PNG....")
        payload = {
            "conversationId": conversation,
            "attachmentIds": [attachment_id],
            "clientMessageId": "with-a-file",
        }
        first = await a.ok("sendMessage", payload)
        again = await a.ok("sendMessage", payload)
    assert again["id"] == first["id"]
    assert [x["id"] for x in again["attachments"]] == [attachment_id]
    assert await _stored_messages(att_svc, conversation) == 1


# --- refusals ------------------------------------------------------------------------------------


async def test_only_participants_can_create_uploads(att_svc: RunningService) -> None:
    alice, bob = await _pair(att_svc)
    carol = unique("carol")
    async with devices(att_svc, alice, carol) as [a, c]:
        conversation = await open_conversation(att_svc, a, bob)
        reply = await c.call("createUpload", _upload_request(conversation, b"x"))
        missing = await c.call("createUpload", _upload_request(str(uuid.uuid4()), b"x"))
    assert reply["ok"] is False and reply["error"]["code"] == "FORBIDDEN", reply
    assert missing["ok"] is False and missing["error"]["code"] == "NOT_FOUND", missing


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"sizeBytes": 2 * MIB + 1}, "sizeBytes"),
        ({"contentType": "application/x-msdownload"}, "contentType"),
        ({"contentType": "text/html"}, "contentType"),
        ({"contentType": "not a type"}, "contentType"),
        ({"sizeBytes": -1}, "sizeBytes"),
        ({"fileName": ""}, "fileName"),
        ({"fileName": "a\x00b"}, "fileName"),
    ],
)
async def test_an_upload_too_large_or_of_a_disallowed_type_is_refused(
    att_svc: RunningService, fields: dict[str, Any], field: str
) -> None:
    alice, bob = await _pair(att_svc)
    async with devices(att_svc, alice) as [a]:
        conversation = await open_conversation(att_svc, a, bob)
        error = _refused(
            await a.call("createUpload", _upload_request(conversation, b"x", **fields))
        )
    assert field in str(error.get("details")), error


async def test_a_file_whose_stored_size_differs_from_the_declared_one_is_not_sent(
    att_svc: RunningService, http: httpx.AsyncClient
) -> None:
    alice, bob = await _pair(att_svc)
    async with devices(att_svc, alice, bob) as [a, b]:
        conversation = await open_conversation(att_svc, a, bob)
        upload = await a.ok("createUpload", _upload_request(conversation, b"x" * 1000))
        assert (await _put(http, upload, b"x" * 999)).status_code == 200
        short = _refused(
            await a.call(
                "sendMessage",
                {"conversationId": conversation, "attachmentIds": [upload["attachmentId"]]},
            )
        )
        never = await a.ok("createUpload", _upload_request(conversation, b"y" * 10))
        missing = _refused(
            await a.call(
                "sendMessage",
                {
                    "conversationId": conversation,
                    "content": "see attached",
                    "attachmentIds": [never["attachmentId"]],
                },
            )
        )
        await b.nothing("newMessage")
    assert "999" in short["details"][upload["attachmentId"]]
    assert "not been uploaded" in missing["details"][never["attachmentId"]]
    assert await _stored_messages(att_svc, conversation) == 0


async def test_a_file_of_another_type_or_larger_than_declared_is_not_sent(
    att_svc: RunningService, http: httpx.AsyncClient
) -> None:
    local = att_svc.settings.attachments_backend == "local"
    alice, bob = await _pair(att_svc)
    async with devices(att_svc, alice) as [a]:
        conversation = await open_conversation(att_svc, a, bob)
        upload = await a.ok("createUpload", _upload_request(conversation, b"x" * 100))
        send = {"conversationId": conversation, "attachmentIds": [upload["attachmentId"]]}
        other_type = await http.put(
            upload["uploadUrl"], content=b"x" * 100, headers={"Content-Type": "text/html"}
        )
        # The local store refuses it at once (the type is signed); S3 stores it, and the send
        # refuses it (the stored type is checked with the size).
        assert other_type.status_code == (403 if local else 200)
        as_html = _refused(await a.call("sendMessage", send))
        larger = await _put(http, upload, b"x" * 101)
        assert larger.status_code == (422 if local else 200)
        too_large = _refused(await a.call("sendMessage", send))
    reason = as_html["details"][upload["attachmentId"]]
    assert ("not been uploaded" if local else "text/html") in reason
    reason = too_large["details"][upload["attachmentId"]]
    assert ("not been uploaded" if local else "101 bytes") in reason
    assert await _stored_messages(att_svc, conversation) == 0


async def test_someone_elses_upload_or_one_for_another_conversation_cannot_be_sent(
    att_svc: RunningService, http: httpx.AsyncClient
) -> None:
    alice, bob = await _pair(att_svc)
    dave = unique("dave")
    att_svc.connect_users((alice, dave))
    async with devices(att_svc, alice, bob) as [a, b]:
        conversation = await open_conversation(att_svc, a, bob)
        elsewhere = await open_conversation(att_svc, a, dave)
        alices = await _uploaded(a, http, conversation, b"mine")
        for_dave = await _uploaded(a, http, elsewhere, b"for dave")
        stolen = _refused(
            await b.call(
                "sendMessage",
                {"conversationId": conversation, "content": "look", "attachmentIds": [alices]},
            )
        )
        crossed = _refused(
            await a.call(
                "sendMessage", {"conversationId": conversation, "attachmentIds": [for_dave]}
            )
        )
        unknown = _refused(
            await a.call(
                "sendMessage",
                {"conversationId": conversation, "attachmentIds": [str(uuid.uuid4())]},
            )
        )
    assert stolen["details"] == {alices: "no such upload of yours"}
    assert "another conversation" in crossed["details"][for_dave]
    assert list(unknown["details"].values()) == ["no such upload of yours"]
    assert await _stored_messages(att_svc, conversation) == 0


async def test_an_upload_is_attached_to_one_message_only(
    att_svc: RunningService, http: httpx.AsyncClient
) -> None:
    alice, bob = await _pair(att_svc)
    async with devices(att_svc, alice) as [a]:
        conversation = await open_conversation(att_svc, a, bob)
        attachment_id = await _uploaded(a, http, conversation, b"once")
        payload = {"conversationId": conversation, "attachmentIds": [attachment_id]}
        await a.ok("sendMessage", payload)
        error = _refused(await a.call("sendMessage", payload))
        twice = _refused(
            await a.call(
                "sendMessage",
                {"conversationId": conversation, "attachmentIds": [attachment_id] * 2},
            )
        )
        eleven = _refused(
            await a.call(
                "sendMessage",
                {"conversationId": conversation, "attachmentIds": [str(uuid.uuid4())] * 11},
            )
        )
    assert "already attached" in error["details"][attachment_id]
    assert "once" in twice["message"]
    assert any("attachmentIds" in d["field"] for d in eleven["details"])
    assert await _stored_messages(att_svc, conversation) == 1


async def test_a_tampered_or_expired_url_is_refused(
    att_svc: RunningService, http: httpx.AsyncClient
) -> None:
    alice, bob = await _pair(att_svc)
    async with devices(att_svc, alice) as [a]:
        conversation = await open_conversation(att_svc, a, bob)
        attachment_id = await _uploaded(a, http, conversation, b"secret bytes")
        sent = await a.ok(
            "sendMessage", {"conversationId": conversation, "attachmentIds": [attachment_id]}
        )
        other = await _uploaded(a, http, conversation, b"other bytes")
    url = sent["attachments"][0]["url"]
    assert (await http.get(url)).status_code == 200
    # Another object's key under this signature, a stretched expiry, a changed signature.
    another_key = url.replace(attachment_id, other)
    query = dict(parse_qsl(urlsplit(url).query))
    if "expires" in query:  # the local store: an absolute expiry
        stretched = _tampered(url, expires=str(int(query["expires"]) + 3600))
    else:  # S3: a lifetime in seconds from X-Amz-Date
        stretched = _tampered(url, **{"X-Amz-Expires": str(int(query["X-Amz-Expires"]) + 3600)})
    sig_name = "sig" if "sig" in query else "X-Amz-Signature"
    resigned = _tampered(url, **{sig_name: "0" * len(query[sig_name])})
    for bad in (another_key, stretched, resigned):
        response = await http.get(bad)
        assert response.status_code == 403, (bad, response.status_code, response.text)
        assert b"secret bytes" not in response.content
    # A genuine link that has expired.
    assert att_svc.service.attachments is not None
    store = att_svc.service.attachments.store
    short = await store.presign_download(
        _key(att_svc, conversation, attachment_id),
        content_type="image/png",
        file_name="x.png",
        expires_in=1,
    )
    await asyncio.sleep(2.1)
    expired = await http.get(short.url)
    assert expired.status_code == 403, expired.text


async def test_attachments_are_refused_when_turned_off(database_url: str, backend: str) -> None:
    settings = service_settings(database_url, attachments_backend="off")
    graph = ConnectionGraph()
    async with running_service(settings, graph, backend) as svc:
        alice, bob = await _pair(svc)
        async with devices(svc, alice) as [a]:
            conversation = await open_conversation(svc, a, bob)
            error = _refused(await a.call("createUpload", _upload_request(conversation, b"x")))
            named = _refused(
                await a.call(
                    "sendMessage",
                    {"conversationId": conversation, "attachmentIds": [str(uuid.uuid4())]},
                )
            )
            plain = await a.ok("sendMessage", {"conversationId": conversation, "content": "hi"})
    assert "turned off" in error["message"]
    assert "turned off" in named["message"]
    assert plain["attachments"] == []


# --- cleanup -------------------------------------------------------------------------------------


async def _attachment_rows(svc: RunningService, *ids: str) -> int:
    async with svc.service.chat.engine.connect() as conn:
        count = await conn.scalar(
            select(func.count())
            .select_from(attachments)
            .where(attachments.c.id.in_([uuid.UUID(i) for i in ids]))
        )
    return int(count or 0)


async def test_uploads_never_attached_are_deleted_after_a_day_and_attached_ones_stay(
    att_svc: RunningService, http: httpx.AsyncClient
) -> None:
    alice, bob = await _pair(att_svc)
    async with devices(att_svc, alice) as [a]:
        conversation = await open_conversation(att_svc, a, bob)
        kept = await _uploaded(a, http, conversation, b"kept")
        await a.ok("sendMessage", {"conversationId": conversation, "attachmentIds": [kept]})
        abandoned = await _uploaded(a, http, conversation, b"abandoned")
    attachments_ = att_svc.service.attachments
    assert attachments_ is not None
    # A day is not over yet: nothing goes.
    await attachments_.sweep(now=datetime.now(UTC) + timedelta(hours=23))
    assert await _object_size(att_svc, conversation, abandoned) == len(b"abandoned")
    # Two replicas sweeping at once, past the day: each object is deleted, neither fails.
    later = datetime.now(UTC) + timedelta(hours=24, minutes=1)
    await asyncio.gather(attachments_.sweep(now=later), attachments_.sweep(now=later))
    assert await _object_size(att_svc, conversation, abandoned) is None
    assert await _attachment_rows(att_svc, abandoned) == 0
    assert await _object_size(att_svc, conversation, kept) == len(b"kept")
    assert await _attachment_rows(att_svc, kept) == 1


async def test_an_object_deleted_by_several_replicas_at_once_is_gone_and_no_delete_fails(
    att_svc: RunningService, http: httpx.AsyncClient
) -> None:
    """Two sweepers (or a purge and a sweeper) race on the same object: the loser finds it gone
    (versitygw then answers NoSuchKey, which S3 itself never does), and gone is what it wanted.

    The race is between the server's check and its removal; on this machine one pair of callers
    in twenty hits it, so the test makes 1,600 such races."""
    assert att_svc.service.attachments is not None
    store = att_svc.service.attachments.store
    for _ in range(5):
        keys = [f"{uuid.uuid4()}/{uuid.uuid4()}" for _ in range(40)]
        for key in keys:
            upload = await store.presign_upload(
                key, content_type="image/png", size_bytes=1, expires_in=60
            )
            response = await http.put(upload.url, content=b"x", headers=upload.headers)
            assert response.status_code == 200, response.text
        await asyncio.gather(*(store.delete(key) for key in keys for _ in range(8)))
        assert [await store.stat(key) for key in keys] == [None] * len(keys)


async def test_an_object_the_store_will_not_delete_holds_back_only_its_own_row(
    att_svc: RunningService, http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One object whose delete fails (the store away for it, a permission) must not keep the
    sweeper from the others; its row stays, so the next sweep deletes it."""
    alice, bob = await _pair(att_svc)
    async with devices(att_svc, alice) as [a]:
        conversation = await open_conversation(att_svc, a, bob)
        stuck, *others = [
            await _uploaded(a, http, conversation, b"abandoned %d" % i) for i in range(4)
        ]
    attachments_ = att_svc.service.attachments
    assert attachments_ is not None
    stuck_key = _key(att_svc, conversation, stuck)
    delete = attachments_.store.delete

    async def refusing(key: str) -> None:
        if key == stuck_key:
            raise ObjectStoreUnavailable("the object store is unavailable; try again")
        await delete(key)

    monkeypatch.setattr(attachments_.store, "delete", refusing)
    later = datetime.now(UTC) + timedelta(hours=24, minutes=1)
    await attachments_.sweep(now=later)
    for attachment_id in others:
        assert await _object_size(att_svc, conversation, attachment_id) is None
        assert await _attachment_rows(att_svc, attachment_id) == 0
    assert await _object_size(att_svc, conversation, stuck) == len(b"abandoned 0")
    assert await _attachment_rows(att_svc, stuck) == 1
    # The store takes it again: the next sweep finishes the job.
    monkeypatch.setattr(attachments_.store, "delete", delete)
    await attachments_.sweep(now=later)
    assert await _object_size(att_svc, conversation, stuck) is None
    assert await _attachment_rows(att_svc, stuck) == 0


async def test_an_upload_close_to_its_expiry_can_no_longer_be_sent(
    att_svc: RunningService, http: httpx.AsyncClient
) -> None:
    """The sweeper may be deleting it: a send must not attach an object about to vanish."""
    alice, bob = await _pair(att_svc)
    async with devices(att_svc, alice) as [a]:
        conversation = await open_conversation(att_svc, a, bob)
        old = await _uploaded(a, http, conversation, b"old")
        async with att_svc.service.chat.engine.begin() as conn:
            await conn.execute(
                attachments.update()
                .where(attachments.c.id == uuid.UUID(old))
                .values(created_at=datetime.now(UTC) - timedelta(hours=23, minutes=55))
            )
        error = _refused(
            await a.call("sendMessage", {"conversationId": conversation, "attachmentIds": [old]})
        )
    assert "expired" in error["details"][old]


async def test_deleting_a_message_erases_its_attachments_and_deletes_their_objects(
    att_svc: RunningService, http: httpx.AsyncClient
) -> None:
    alice, bob = await _pair(att_svc)
    async with devices(att_svc, alice) as [a]:
        conversation = await open_conversation(att_svc, a, bob)
        first = await _uploaded(a, http, conversation, b"first file")
        second = await _uploaded(a, http, conversation, b"second file")
        sent = await a.ok(
            "sendMessage", {"conversationId": conversation, "attachmentIds": [first, second]}
        )
        chat = att_svc.service.chat
        # What deleteMessage does: erase in its transaction, purge after the commit.
        async with chat.engine.begin() as conn:
            erased = await chat.attachments.erase_for_messages(conn, [uuid.UUID(sent["id"])])
        await chat.attachments.purge(erased)
        synced = await a.ok("syncMessages", {})
    assert sorted(str(i) for i in erased) == sorted([first, second])
    assert await _object_size(att_svc, conversation, first) is None
    assert await _object_size(att_svc, conversation, second) is None
    assert await _attachment_rows(att_svc, first, second) == 0
    [message] = [m for m in synced["messages"] if m["id"] == sent["id"]]
    assert message["attachments"] == []


async def test_erased_attachments_whose_purge_never_ran_are_deleted_by_the_sweeper(
    att_svc: RunningService, http: httpx.AsyncClient
) -> None:
    alice, bob = await _pair(att_svc)
    async with devices(att_svc, alice) as [a]:
        conversation = await open_conversation(att_svc, a, bob)
        attachment_id = await _uploaded(a, http, conversation, b"doomed")
        sent = await a.ok(
            "sendMessage", {"conversationId": conversation, "attachmentIds": [attachment_id]}
        )
    chat = att_svc.service.chat
    async with chat.engine.begin() as conn:
        await chat.attachments.erase_for_messages(conn, [uuid.UUID(sent["id"])])
    # The process died before purging: the object is still there, its name already erased.
    assert await _object_size(att_svc, conversation, attachment_id) == len(b"doomed")
    async with chat.engine.connect() as conn:
        name = await conn.scalar(
            select(attachments.c.file_name).where(attachments.c.id == uuid.UUID(attachment_id))
        )
    assert name == ""
    assert att_svc.service.attachments is not None
    await att_svc.service.attachments.sweep()
    assert await _object_size(att_svc, conversation, attachment_id) is None
    assert await _attachment_rows(att_svc, attachment_id) == 0


async def test_the_embedded_default_stores_files_on_local_disk_and_serves_them(
    svc: RunningService, http: httpx.AsyncClient
) -> None:
    """`messaging dev`'s settings (no attachment setting at all): the round trip works."""
    assert svc.settings.attachments_backend is None
    alice, bob = await _pair(svc)
    data = os.urandom(50_000)
    async with devices(svc, alice, bob) as [a, b]:
        conversation = await open_conversation(svc, a, bob)
        attachment_id = await _uploaded(a, http, conversation, data)
        await a.ok(
            "sendMessage", {"conversationId": conversation, "attachmentIds": [attachment_id]}
        )
        received = await b.next("newMessage")
    [shown] = received["attachments"]
    assert shown["url"].startswith(svc.url + "/attachments/objects/")
    response = await http.get(shown["url"])
    assert hashlib.sha256(response.content).digest() == hashlib.sha256(data).digest()


async def test_every_replica_runs_the_sweeper_on_its_own(
    database_url: str, backend: str, http: httpx.AsyncClient
) -> None:
    settings = service_settings(database_url, attachments_sweep_seconds=0.2)
    async with running_service(settings, ConnectionGraph(), backend) as svc:
        alice, bob = await _pair(svc)
        async with devices(svc, alice) as [a]:
            conversation = await open_conversation(svc, a, bob)
            attachment_id = await _uploaded(a, http, conversation, b"erased")
            sent = await a.ok(
                "sendMessage", {"conversationId": conversation, "attachmentIds": [attachment_id]}
            )
        chat = svc.service.chat
        async with chat.engine.begin() as conn:
            await chat.attachments.erase_for_messages(conn, [uuid.UUID(sent["id"])])
        # Nobody purges: the replica's own periodic sweep deletes the object.
        for _ in range(100):
            if await _object_size(svc, conversation, attachment_id) is None:
                break
            await asyncio.sleep(0.1)
        assert await _object_size(svc, conversation, attachment_id) is None
        assert await _attachment_rows(svc, attachment_id) == 0


async def test_the_official_js_client_and_fetch_make_the_same_round_trip(
    att_svc: RunningService,
) -> None:
    alice, bob = await _pair(att_svc)
    result = await node(
        "attachments.mjs", att_svc.url, att_svc.token(alice), att_svc.token(bob), bob, "300000"
    )
    assert result["putStatus"] == 200
    assert result["sentOk"] is True
    assert result["getStatus"] == 200
    assert result["getType"].startswith("video/mp4")
    assert result["attachment"]["fileName"] == "from node.mp4"
    assert result["downloadedSha256"] == result["uploadedSha256"]
