"""The operator's own errors; aiohttp's and pydantic's never leak past the module that met them.

Two families matter to the handlers: a spec the operator cannot act on (nothing changes until a
human edits it, so retrying is pointless) and a Kubernetes API failure (most are worth retrying).
"""

from __future__ import annotations


class OperatorError(Exception):
    """Base of every error the operator raises on purpose."""


class InvalidSpecError(OperatorError):
    """The MessagingCluster's spec cannot be turned into children; only an edit fixes it."""


class KubeError(OperatorError):
    """A Kubernetes API call failed; ``status`` is the HTTP status (0 when none was received)."""

    def __init__(
        self,
        message: str,
        *,
        status: int = 0,
        reason: str = "",
        causes: tuple[str, ...] = (),
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.causes = causes  # details.causes[].reason, e.g. NamespaceTerminating
        self.retry_after = retry_after  # seconds, from a 429's Retry-After header

    @property
    def namespace_terminating(self) -> bool:
        return "NamespaceTerminating" in self.causes or "is being terminated" in str(self)

    @property
    def retryable(self) -> bool:
        """Whether the same call may succeed later without anyone changing the request."""
        return self.status in (0, 408, 409, 429) or self.status >= 500


class KubeNotFoundError(KubeError):
    """404: the object (or its namespace, or the resource type) does not exist."""


class KubeConflictError(KubeError):
    """409: the object already exists, or a write lost a race."""


class KubeForbiddenError(KubeError):
    """403: the operator's RBAC does not allow the call."""


class KubeInvalidError(KubeError):
    """422 (or an undecodable object): the API server rejected the object we built."""

    @property
    def retryable(self) -> bool:
        return False  # the same object is refused again: only a spec change helps


class KubeUnavailableError(KubeError):
    """No HTTP answer at all: connection refused or reset, TLS failure, timeout."""
