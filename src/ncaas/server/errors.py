"""Errors of the server, each carrying the HTTP status it is answered with.

ServerError
├── AccountError          400  bad account administration (unknown user, ...)
├── DatabaseUnavailable   503  the accounts/jobs database cannot be reached
├── Unauthorized          401  missing, unknown or revoked token
├── Forbidden             403  the caller's group may not touch this
├── NotFound              404  no such job, file, upload or analysis (or not yours)
├── BadRequest            400  malformed request: bad path, bad JSON, bad config
├── Conflict              409  upload offset mismatch, file exists, ...
├── TooLarge              413  upload larger than the server accepts
├── TooManyFailures       429  too many failed authentications from the caller's address
├── StorageFull           507  no room on the disk or in the group's quota (ncaas.server.space)
└── ChecksumMismatch      422  uploaded bytes do not match the given sha256

One handler in :mod:`ncaas.server.app` turns them into ``{"error": message}``
responses; no traceback ever reaches a client.
"""

from __future__ import annotations

from ..exceptions import NcaasError

__all__ = [
    "AccountError",
    "BadRequest",
    "ChecksumMismatch",
    "Conflict",
    "DatabaseUnavailable",
    "Forbidden",
    "NotFound",
    "ServerError",
    "TooLarge",
    "TooManyFailures",
    "Unauthorized",
]


class ServerError(NcaasError):
    status = 500

    def __init__(self, message: str, **extra):
        super().__init__(message)
        self.message = message
        self.extra = extra  # more machine-readable fields for the response body


class AccountError(ServerError):
    status = 400


class DatabaseUnavailable(ServerError):
    status = 503


class Unauthorized(ServerError):
    status = 401


class Forbidden(ServerError):
    status = 403


class NotFound(ServerError):
    status = 404


class BadRequest(ServerError):
    status = 400


class Conflict(ServerError):
    status = 409


class TooLarge(ServerError):
    status = 413


class TooManyFailures(ServerError):
    status = 429  # the body's ``retry_after`` is also sent as ``Retry-After``


class ChecksumMismatch(ServerError):
    status = 422
