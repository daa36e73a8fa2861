"""One exception type per failure class.

Every adapter maps these to its protocol's error shape in ``encode_error``;
``kind`` is the protocol-neutral class name each adapter translates.
"""

from __future__ import annotations

KINDS = (
    "invalid_request",  # 400
    "authentication",  # 401
    "permission",  # 403
    "not_found",  # 404
    "request_too_large",  # 413
    "rate_limit",  # 429
    "insufficient_quota",  # 429: a budget or token allowance is used up
    "api_error",  # 500
    "bad_gateway",  # 502
    "unavailable",  # 503
    "timeout",  # 504
    "overloaded",  # 529
)

_KIND_BY_STATUS = {
    400: "invalid_request",
    401: "authentication",
    403: "permission",
    404: "not_found",
    408: "timeout",
    413: "request_too_large",
    422: "invalid_request",
    429: "rate_limit",
    500: "api_error",
    502: "bad_gateway",
    503: "unavailable",
    504: "timeout",
    529: "overloaded",
}


def kind_for_status(status: int) -> str:
    if status in _KIND_BY_STATUS:
        return _KIND_BY_STATUS[status]
    return "invalid_request" if 400 <= status < 500 else "api_error"


class ProxyError(Exception):
    status = 500
    kind = "api_error"
    retry_after: float | None = None  # seconds; sent as Retry-After with a 429 or 503

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class ClientError(ProxyError):
    status, kind = 400, "invalid_request"


class AuthError(ProxyError):
    status, kind = 401, "authentication"


class Forbidden(ProxyError):
    status, kind = 403, "permission"


class NotFound(ProxyError):
    status, kind = 404, "not_found"


class RequestTimeout(ProxyError):
    """The client did not send its request body within server.request_body_timeout."""

    status, kind = 408, "timeout"


class TooLarge(ProxyError):
    status, kind = 413, "request_too_large"


class RateLimited(ProxyError):
    status, kind = 429, "rate_limit"


class LimitExceeded(RateLimited):
    """An access key is over one of its own limits; ``headers`` tell the client which and until when."""

    def __init__(self, message: str, headers: dict[str, str], *, quota: bool = False) -> None:
        super().__init__(message)
        self.headers = headers
        if quota:
            self.kind = "insufficient_quota"


class Unavailable(ProxyError):
    """Nothing could be tried (an alias without targets); upstream 503s are UpstreamErrors."""

    status, kind = 503, "unavailable"


class BadGateway(ProxyError):
    """The upstream could not be reached or answered something unusable."""

    status, kind = 502, "bad_gateway"


class UpstreamTimeout(ProxyError):
    status, kind = 504, "timeout"


class UpstreamError(ProxyError):
    """The upstream answered with an error status; status and message are passed on."""

    def __init__(self, status: int, kind: str | None, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind or kind_for_status(status)
        self.retry_after = retry_after
