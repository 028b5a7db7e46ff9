"""The pure rules of attachments: limits, content types, the local store's signed links."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import pytest
from pydantic import ValidationError

from messaging.attachments import Attachments, Limits, check_upload, content_type_allowed
from messaging.errors import Forbidden, ValidationFailed
from messaging.objectstore import LocalObjectStore, content_disposition
from messaging.settings import Settings

DEFAULT_TYPES = tuple(Settings().attachments_content_types)
KEY = "0193a0b0-0000-7000-8000-000000000001/0193a0b0-0000-7000-8000-000000000002"


def _limits(**overrides: object) -> Limits:
    values: dict[str, object] = {
        "max_bytes": 25 * 1024 * 1024,
        "content_types": DEFAULT_TYPES,
        "upload_url_seconds": 900,
        "download_url_seconds": 900,
        "unattached_ttl": timedelta(days=1),
        "sweep_seconds": 300.0,
    }
    values.update(overrides)
    return Limits(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("content_type", "allowed"),
    [
        ("image/png", True),
        ("IMAGE/JPEG", True),
        ("application/pdf", True),
        ("text/plain; charset=utf-8", True),
        ("audio/ogg", True),
        ("video/mp4", True),
        ("text/html", False),
        ("application/x-msdownload", False),
        ("application/pdf-but-not", False),
        ("image", False),
        ("/png", False),
    ],
)
def test_the_default_content_types_are_images_pdf_plain_text_audio_and_video(
    content_type: str, allowed: bool
) -> None:
    assert content_type_allowed(content_type, DEFAULT_TYPES) is allowed


def test_the_default_size_limit_is_25_mib() -> None:
    limits = _limits(max_bytes=Settings().attachments_max_bytes)
    check_upload(limits, content_type="image/png", size_bytes=25 * 1024 * 1024)
    with pytest.raises(ValidationFailed):
        check_upload(limits, content_type="image/png", size_bytes=25 * 1024 * 1024 + 1)


@pytest.mark.parametrize(
    "env",
    [
        {"MESSAGING_ATTACHMENTS_BACKEND": "s3"},  # no bucket
        {
            "MESSAGING_ATTACHMENTS_BACKEND": "s3",
            "MESSAGING_S3_BUCKET": "b",
            "MESSAGING_S3_ACCESS_KEY_ID": "only-the-id",
        },
        {"MESSAGING_ATTACHMENTS_BACKEND": "dropbox"},
        {"MESSAGING_ATTACHMENTS_CONTENT_TYPES": "image/*,*/*"},
        {"MESSAGING_ATTACHMENTS_CONTENT_TYPES": "pdf"},
        {"MESSAGING_S3_ENDPOINT_URL": "minio:9000"},
        {"MESSAGING_ATTACHMENTS_MAX_BYTES": "0"},
        {"MESSAGING_ATTACHMENTS_SECRET": "short"},
    ],
)
def test_nonsense_attachment_settings_fail_at_start_up(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError):
        Settings()


def test_the_backend_defaults_to_local_disk_in_dev_and_off_in_production() -> None:
    assert Settings().effective_attachments_backend == "local"
    production = Settings(
        mode="production",
        jwt_secret="x" * 40,
        database_url="postgresql://db/messaging",
    )
    assert production.effective_attachments_backend == "off"
    types = Settings(attachments_content_types="image/png, application/PDF")
    assert types.attachments_content_types == ["image/png", "application/pdf"]


async def _store(tmp_path: Path, secret: bytes = b"k" * 32) -> LocalObjectStore:
    store = LocalObjectStore(root=tmp_path, base_url="http://127.0.0.1:8000", secret=secret)
    await store.start()
    return store


def _query(url: str) -> dict[str, str]:
    return dict(parse_qsl(urlsplit(url).query))


async def test_a_local_link_is_accepted_only_as_signed_for_its_method_key_and_lifetime(
    tmp_path: Path,
) -> None:
    store = await _store(tmp_path)
    get = await store.presign_download(
        KEY, content_type="image/png", file_name="a.png", expires_in=60
    )
    query = _query(get.url)
    assert store.verify("GET", KEY, query)["type"] == "image/png"
    with pytest.raises(Forbidden):
        store.verify("PUT", KEY, query)  # a download link is no upload link
    with pytest.raises(Forbidden):
        store.verify("GET", KEY[:-1] + "3", query)
    for name, value in [("type", "text/html"), ("name", "b.exe"), ("expires", "99999999999")]:
        with pytest.raises(Forbidden):
            store.verify("GET", KEY, query | {name: value})
    other = await _store(tmp_path, secret=b"o" * 32)  # another deployment's key
    with pytest.raises(Forbidden):
        other.verify("GET", KEY, query)
    with pytest.raises(Forbidden):
        store.verify("GET", "../../etc/passwd", query)
    with pytest.raises(Forbidden):
        store.verify("GET", KEY, query | {"sig": "\u00e9" * 64})  # not even ASCII


async def test_an_expired_local_link_is_refused(tmp_path: Path) -> None:
    store = await _store(tmp_path)
    get = await store.presign_download(KEY, content_type="image/png", file_name="a", expires_in=1)
    query = _query(get.url)
    # Signed with an expiry already past (what a link looks like once its time is up).
    expired = {k: v for k, v in query.items() if k != "sig"} | {
        "expires": str(int(time.time()) - 1)
    }
    expired["sig"] = store._signature("GET", KEY, expired)
    with pytest.raises(Forbidden, match="expired"):
        store.verify("GET", KEY, expired)


def test_a_file_name_cannot_inject_headers_into_the_download() -> None:
    header = content_disposition('evil"\r\nSet-Cookie: a=b.png')
    assert "\r" not in header and "\n" not in header and '"' not in header
    assert header.startswith("attachment; filename*=UTF-8''")


async def test_a_short_ttl_still_leaves_time_to_send_an_upload(tmp_path: Path) -> None:
    limits = _limits(unattached_ttl=timedelta(minutes=2))
    attachments = Attachments(store=await _store(tmp_path), limits=limits)
    cutoff = attachments._attachable_after()
    assert datetime.now(UTC) - timedelta(minutes=2) < cutoff < datetime.now(UTC)
