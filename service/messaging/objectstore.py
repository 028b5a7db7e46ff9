"""Where attachment bytes live: an S3-compatible object store, or the local disk.

The service never carries the bytes. It hands clients presigned requests (an upload ``PUT`` and
download ``GET`` URLs that expire), asks the store how large an object is before a message may
reference it, and deletes objects. Two stores behind one small interface:

- ``S3ObjectStore``: any S3-compatible store (AWS S3, MinIO, SeaweedFS, versitygw, R2...) through
  miniopy-async, an asyncio S3 client over aiohttp (docs/attachments.md says why this client and
  not aiobotocore).
- ``LocalObjectStore``: files in a directory, served by this process's HTTP app with the same
  rules (an HMAC signature over method, key, expiry and the declared type and size; refused when
  tampered with or expired), so ``messaging dev`` works with no object store.

Every failure of a store is ``ObjectStoreUnavailable`` (a typed ``UNAVAILABLE``), chained to the
library's error, so no minio, aiohttp or OS error reaches a client.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import os
import re
import secrets
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol
from urllib.parse import quote, urlencode, urlsplit

from aiohttp import ClientError, ClientSession, ClientTimeout, TCPConnector
from aiohttp_retry import ExponentialRetry, RetryClient
from miniopy_async.api import Minio
from miniopy_async.credentials.providers import (
    AWSConfigProvider,
    ChainedProvider,
    EnvAWSProvider,
    IamAwsProvider,
)
from miniopy_async.error import MinioException, S3Error

from messaging.errors import Forbidden, Unavailable, ValidationFailed

log = logging.getLogger(__name__)

# Object keys are made by the service ("<conversation id>/<attachment id>"); the local store
# refuses anything else, so a URL can never name a path outside its directory.
_KEY = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}/[0-9a-f-]{36}")
LOCAL_ROUTE = "/attachments/objects"
_MISSING = ("NoSuchKey", "NotFound", "NoSuchObject", "ResourceNotFound")


class ObjectStoreUnavailable(Unavailable):
    """The object store did not answer, or answered with an error."""


@dataclass(frozen=True, slots=True)
class SignedRequest:
    """A request a client may make directly against the store until ``expires_at``."""

    method: str
    url: str
    headers: dict[str, str]
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class StoredObject:
    size: int
    content_type: str | None  # None where the store keeps none (the local store checks it)


class ObjectStore(Protocol):
    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def presign_upload(
        self, key: str, *, content_type: str, size_bytes: int, expires_in: int
    ) -> SignedRequest: ...

    async def presign_download(
        self, key: str, *, content_type: str, file_name: str, expires_in: int
    ) -> SignedRequest: ...

    async def stat(self, key: str) -> StoredObject | None:
        """The stored object's size and type, or None when there is no such object."""
        ...

    async def delete(self, key: str) -> None:
        """Delete the object; deleting one that is not there is not an error."""
        ...


def object_key(conversation_id: object, attachment_id: object) -> str:
    return f"{conversation_id}/{attachment_id}"


def _expires_at(expires_in: int) -> tuple[int, datetime]:
    at = int(time.time()) + expires_in
    return at, datetime.fromtimestamp(at, UTC)


def content_disposition(file_name: str) -> str:
    """``attachment`` with the name in RFC 5987 form: any Unicode name, no header injection."""
    return f"attachment; filename*=UTF-8''{quote(file_name, safe='')}"


# --- S3 ------------------------------------------------------------------------------------------


class S3ObjectStore:
    """An S3-compatible bucket through miniopy-async (one client and HTTP session per process,
    opened at start). Presigning is local computation (SigV4); HEAD and DELETE are requests."""

    def __init__(
        self,
        *,
        bucket: str,
        region: str,
        endpoint_url: str = "",
        access_key_id: str = "",
        secret_access_key: str = "",
        path_style: bool = True,
        public_url: str = "",
        timeout_seconds: float = 5.0,
    ) -> None:
        self.bucket = bucket
        self._public_url = public_url or None
        parts = urlsplit(endpoint_url or f"https://s3.{region}.amazonaws.com")
        self._endpoint = parts.netloc
        self._secure = parts.scheme == "https"
        self._region = region
        self._access_key_id = access_key_id or None
        self._secret_access_key = secret_access_key or None
        self._path_style = path_style
        self._timeout = timeout_seconds
        self._client: Minio | None = None

    async def start(self) -> None:
        # Short timeouts and a few retries of 5xx answers: a HEAD stands in a send's path.
        session = RetryClient(
            ClientSession(
                timeout=ClientTimeout(total=self._timeout * 2, connect=self._timeout),
                connector=TCPConnector(limit=64),
            ),
            retry_options=ExponentialRetry(attempts=3, factor=0.1, statuses={500, 502, 503, 504}),
        )
        client = Minio(
            self._endpoint,
            access_key=self._access_key_id,
            secret_key=self._secret_access_key,
            secure=self._secure,
            region=self._region,
            session=session,
            server_url=self._public_url,
            # No keys: the usual AWS chain (environment, config files, the instance's IAM role).
            credentials=None
            if self._access_key_id
            else ChainedProvider([EnvAWSProvider(), AWSConfigProvider(), IamAwsProvider()]),
        )
        if self._path_style:
            client.disable_virtual_style_endpoint()  # type: ignore[no-untyped-call]
        else:
            client.enable_virtual_style_endpoint()  # type: ignore[no-untyped-call]
        self._client = client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close_session()  # type: ignore[no-untyped-call]
            self._client = None

    @contextlib.asynccontextmanager
    async def _calling(self, what: str) -> AsyncIterator[Minio]:
        if self._client is None:
            raise ObjectStoreUnavailable("the object store client is not started")
        try:
            yield self._client
        except (MinioException, ClientError, OSError, TimeoutError, ValueError) as exc:
            log.warning("object store %s failed", what, extra={"error": repr(exc)[:300]})
            raise ObjectStoreUnavailable("the object store is unavailable; try again") from exc

    async def ensure_bucket(self) -> None:
        """Create the bucket if it is missing (tests and first runs; production has one)."""
        async with self._calling("create bucket") as client:
            if not await client.bucket_exists(self.bucket):
                await client.make_bucket(self.bucket, location=self._region)

    async def presign_upload(
        self, key: str, *, content_type: str, size_bytes: int, expires_in: int
    ) -> SignedRequest:
        # S3 presigned PUTs sign no headers here; the declared type and size are checked on the
        # stored object (HEAD) before a message may reference it.
        _, expires_at = _expires_at(expires_in)
        async with self._calling("presign") as client:
            url = await client.presigned_put_object(
                self.bucket, key, expires=timedelta(seconds=expires_in)
            )
        return SignedRequest("PUT", url, {"Content-Type": content_type}, expires_at)

    async def presign_download(
        self, key: str, *, content_type: str, file_name: str, expires_in: int
    ) -> SignedRequest:
        _, expires_at = _expires_at(expires_in)
        async with self._calling("presign") as client:
            url = await client.presigned_get_object(
                self.bucket,
                key,
                expires=timedelta(seconds=expires_in),
                response_headers={
                    "response-content-type": content_type,
                    "response-content-disposition": content_disposition(file_name),
                },
            )
        return SignedRequest("GET", url, {}, expires_at)

    async def stat(self, key: str) -> StoredObject | None:
        async with self._calling("head") as client:
            try:
                found = await client.stat_object(self.bucket, key)
            except S3Error as exc:
                if exc.code in _MISSING:
                    return None
                raise
        return StoredObject(size=found.size or 0, content_type=found.content_type)

    async def delete(self, key: str) -> None:
        """Delete ``key``; one already gone counts as deleted.

        S3 answers 204 for a missing key, but S3-compatible servers may not: versitygw answers
        NoSuchKey when another delete removed the file between its check and its own removal
        (two replicas sweeping at once).
        """
        async with self._calling("delete") as client:
            try:
                await client.remove_object(self.bucket, key)
            except S3Error as exc:
                if exc.code not in _MISSING:
                    raise


# --- local disk ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Download:
    path: Path
    content_type: str
    file_name: str


class LocalObjectStore:
    """Files under ``root``, uploaded and downloaded through this process's own HTTP routes.

    A link is ``{base_url}/attachments/objects/{key}?{params}&sig=...``: the HMAC-SHA256 (key from
    the settings, shared by every replica) of the method, the key and the parameters. An upload
    link fixes the content type and the size; the body is refused past the declared size, and a
    file is only visible once complete (written beside, then renamed).
    """

    def __init__(self, *, root: Path, base_url: str, secret: bytes) -> None:
        self.root = root
        self._base_url = base_url.rstrip("/")
        self._secret = secret

    async def start(self) -> None:
        await asyncio.to_thread(self.root.mkdir, parents=True, exist_ok=True)

    async def close(self) -> None:
        return None

    def _signature(self, method: str, key: str, params: Mapping[str, str]) -> str:
        text = "\n".join([method, key, *(f"{k}={params[k]}" for k in sorted(params))])
        return hmac.new(self._secret, text.encode(), hashlib.sha256).hexdigest()

    def _url(self, method: str, key: str, params: dict[str, str]) -> str:
        signed = {**params, "sig": self._signature(method, key, params)}
        return f"{self._base_url}{LOCAL_ROUTE}/{key}?{urlencode(signed)}"

    async def presign_upload(
        self, key: str, *, content_type: str, size_bytes: int, expires_in: int
    ) -> SignedRequest:
        expires, expires_at = _expires_at(expires_in)
        params = {"expires": str(expires), "type": content_type, "size": str(size_bytes)}
        return SignedRequest(
            "PUT", self._url("PUT", key, params), {"Content-Type": content_type}, expires_at
        )

    async def presign_download(
        self, key: str, *, content_type: str, file_name: str, expires_in: int
    ) -> SignedRequest:
        expires, expires_at = _expires_at(expires_in)
        params = {"expires": str(expires), "type": content_type, "name": file_name}
        return SignedRequest("GET", self._url("GET", key, params), {}, expires_at)

    def verify(self, method: str, key: str, query: Mapping[str, str]) -> dict[str, str]:
        """The signed parameters of a link, if it is genuine and not expired; else FORBIDDEN."""
        if not _KEY.fullmatch(key):
            raise Forbidden("no such object")
        params = {k: v for k, v in query.items() if k != "sig"}
        given = query.get("sig", "")
        expected = self._signature(method, key, params)
        if not hmac.compare_digest(given.encode(), expected.encode()):
            raise Forbidden("the link's signature does not match")
        try:
            expires = int(params.get("expires", ""))
        except ValueError:
            raise Forbidden("the link has no expiry") from None
        if time.time() > expires:
            raise Forbidden("the link has expired")
        return params

    def _path(self, key: str) -> Path:
        if not _KEY.fullmatch(key):
            raise ValidationFailed("not an object key of this service")
        return self.root / key

    async def receive(
        self,
        key: str,
        query: Mapping[str, str],
        *,
        content_type: str | None,
        body: AsyncIterator[bytes],
    ) -> None:
        """Store an upload made with a link from ``presign_upload``."""
        params = self.verify("PUT", key, query)
        if (content_type or "").lower() != params["type"]:
            raise Forbidden("the Content-Type header differs from the one the link was made for")
        limit = int(params["size"])
        path = self._path(key)
        await asyncio.to_thread(path.parent.mkdir, parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{secrets.token_hex(4)}.part")
        received = 0
        handle = await asyncio.to_thread(partial.open, "wb")
        try:
            async for chunk in body:
                received += len(chunk)
                if received > limit:
                    raise ValidationFailed("the body is larger than the size the link was made for")
                await asyncio.to_thread(handle.write, chunk)
            await asyncio.to_thread(handle.close)
            await asyncio.to_thread(os.replace, partial, path)
        except BaseException:
            handle.close()
            partial.unlink(missing_ok=True)
            raise

    def download(self, key: str, query: Mapping[str, str]) -> Download:
        """What a link from ``presign_download`` serves (the caller checks the file exists)."""
        params = self.verify("GET", key, query)
        return Download(self._path(key), params["type"], params["name"])

    async def stat(self, key: str) -> StoredObject | None:
        try:
            found = await asyncio.to_thread(self._path(key).stat)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ObjectStoreUnavailable("the attachment directory is unavailable") from exc
        # The type was checked against the signed one when the file was received.
        return StoredObject(size=found.st_size, content_type=None)

    async def delete(self, key: str) -> None:
        try:
            await asyncio.to_thread(self._path(key).unlink, missing_ok=True)
        except OSError as exc:
            raise ObjectStoreUnavailable("the attachment directory is unavailable") from exc
