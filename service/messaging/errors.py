"""The service's typed errors, and the one place they are mapped to each transport.

Logic raises one of these; the Socket.IO layer turns it into an ack envelope, the gRPC layer into a
status code and the HTTP layer into a status. Anything else that escapes a handler is an
``INTERNAL`` error whose details are logged, never sent to the client.
"""

from __future__ import annotations

from typing import Any, ClassVar

import grpc


class MessagingError(Exception):
    """Base of every error a client may see; ``code`` is the contract's error code."""

    code: ClassVar[str] = "INTERNAL"
    grpc_status: ClassVar[grpc.StatusCode] = grpc.StatusCode.INTERNAL
    http_status: ClassVar[int] = 500

    def __init__(self, message: str, *, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def to_ack(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details is not None:
            error["details"] = self.details
        return {"ok": False, "error": error}


class ValidationFailed(MessagingError):
    code = "VALIDATION_FAILED"
    grpc_status = grpc.StatusCode.INVALID_ARGUMENT
    http_status = 422


class Unauthorized(MessagingError):
    code = "UNAUTHORIZED"
    grpc_status = grpc.StatusCode.UNAUTHENTICATED
    http_status = 401


class Forbidden(MessagingError):
    code = "FORBIDDEN"
    grpc_status = grpc.StatusCode.PERMISSION_DENIED
    http_status = 403


class NotFound(MessagingError):
    code = "NOT_FOUND"
    grpc_status = grpc.StatusCode.NOT_FOUND
    http_status = 404


class RateLimited(MessagingError):
    code = "RATE_LIMITED"
    grpc_status = grpc.StatusCode.RESOURCE_EXHAUSTED
    http_status = 429


class Unavailable(MessagingError):
    code = "UNAVAILABLE"
    grpc_status = grpc.StatusCode.UNAVAILABLE
    http_status = 503


class Internal(MessagingError):
    code = "INTERNAL"


INTERNAL_MESSAGE = "internal error"


def as_messaging_error(exc: BaseException) -> MessagingError:
    """The client-facing form of any exception: ours as they are, anything else as INTERNAL."""
    if isinstance(exc, MessagingError):
        return exc
    return Internal(INTERNAL_MESSAGE)


# Every code an ack may carry: the contract's list, one per error class above.
ACK_CODES = frozenset(error.code for error in MessagingError.__subclasses__())
