"""Errors raised by the client: one class per kind of failure, each carrying the API's
stable ``code``, its message and the HTTP status."""

from __future__ import annotations

from typing import Any, Optional


class ExemplarError(Exception):
    """The base of every error this client raises."""

    def __init__(
        self,
        message: str,
        *,
        code: str = "client_error",
        status: Optional[int] = None,
        param: Optional[str] = None,
        body: Any = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status
        self.param = param
        self.body = body

    def __str__(self) -> str:
        status = f"{self.status} " if self.status is not None else ""
        return f"{status}{self.code}: {self.message}"


class InvalidRequestError(ExemplarError):
    """The request was refused as it stands (400, 413, 415, 422): fix it, do not retry."""


class AuthenticationError(ExemplarError):
    """No API key, or one the server does not know (401)."""


class PermissionDeniedError(ExemplarError):
    """The key's scope or tasks do not cover the request (403)."""


class NotFoundError(ExemplarError):
    """The task, row, job, key or model does not exist (404)."""


class ConflictError(ExemplarError):
    """The request conflicts with what is stored (409)."""


class RateLimitError(ExemplarError):
    """The server or this client's share is busy (429), after the client's retries."""


class UnavailableError(ExemplarError):
    """The server is loading, stopping or cannot reach its database (503), after retries."""


class ServerError(ExemplarError):
    """A failure inside the service (500); its cause is in the server's log."""


class JobFailedError(ExemplarError):
    """A background job (evaluation, tuning, selection) ended failed or cancelled."""


_BY_STATUS = {
    400: InvalidRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    408: ServerError,
    409: ConflictError,
    413: InvalidRequestError,
    415: InvalidRequestError,
    422: InvalidRequestError,
    429: RateLimitError,
    503: UnavailableError,
}


def from_response(status: int, body: Any) -> ExemplarError:
    """The error for an answer with ``status`` and the (parsed) ``body``."""
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        message = str(error.get("message", ""))
        code = str(error.get("code", "unknown"))
        param = error.get("param")
    else:
        message, code, param = f"HTTP {status}: {body!r}", "unknown", None
    kind = _BY_STATUS.get(status, ServerError if status >= 500 else ExemplarError)
    return kind(message, code=code, status=status, param=param, body=body)
