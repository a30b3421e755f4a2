"""The API's errors, in the Cloud API's shape: ``{"error": {"type", "message", "param"}}``.

ApiError                    any answer that is not a success
├── 400 invalid_request     a malformed or unknown parameter (``param`` names it)
├── 401 authentication      a missing, unknown, expired or revoked key
├── 403 permission          a read key writing, a request from outside the key's
│                           networks, plain HTTP, a live key simulating
├── 404 not_found           not in the key's project and mode (or nowhere)
├── 409 conflict            an Idempotency-Key reused with another request
├── 422 invalid_request     well-formed, refused by the domain (a blocked URL, a bad type)
├── 429 rate_limited        over the live key's rate limit (with Retry-After)
└── 5xx server              ours, never the caller's
"""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse


class ApiError(Exception):
    """An answer that is not a success: its status, type, message and the parameter at fault."""

    def __init__(
        self,
        status: int,
        type: str,
        message: str,
        *,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.type = type
        self.message = message
        self.param = param
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        """The JSON body of the answer."""
        return {"error": {"type": self.type, "message": self.message, "param": self.param}}

    def response(self) -> JSONResponse:
        """The answer itself."""
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def invalid(message: str, param: str | None = None) -> ApiError:
    """400: a malformed or unknown parameter."""
    return ApiError(400, "invalid_request", message, param=param)


def refused(message: str, param: str | None = None) -> ApiError:
    """422: a well-formed request the domain refuses (the message says why)."""
    return ApiError(422, "invalid_request", message, param=param)


def not_found(kind: str, object_id: str) -> ApiError:
    """404: no such object in the key's project and mode."""
    return ApiError(
        404,
        "not_found",
        f"no {kind} {object_id} in this key's project and mode; check the id, and that the "
        "key is of the right project and mode (sk_live_ or sk_test_)",
        param="id",
    )


def forbidden(message: str) -> ApiError:
    """403: the key may not do this."""
    return ApiError(403, "permission", message)


def unauthenticated(message: str) -> ApiError:
    """401: no usable key."""
    return ApiError(401, "authentication", message, headers={"WWW-Authenticate": "Bearer"})


def server_error(status: int) -> JSONResponse:
    """5xx: ours (503: for a moment, such as the database not answering)."""
    message = (
        "the service is unavailable for a moment; retry with exponential backoff"
        if status == 503
        else "an error on our side; retry with exponential backoff"
    )
    return ApiError(status, "server", message).response()
