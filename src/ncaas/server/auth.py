"""Authentication: bearer tokens on every API call, and short-lived signed
tickets for the few URLs a browser must open without headers (downloads).

A ticket is bound to one user, group and URL path prefix (e.g. one job's
``/api/jobs/<id>/``) and expires after a few minutes; it is an HMAC under a
per-process secret, so a server restart invalidates all tickets.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import secrets
import time

from fastapi import Request

from .accounts import Accounts, Principal
from .errors import TooManyFailures, Unauthorized
from .ratelimit import FailureLimiter

__all__ = ["Authenticator"]

TICKET_SECONDS = 300
log = logging.getLogger("ncaas.server")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def client_address(request: Request) -> str:
    """The socket peer's address (uvicorn puts a trusted proxy's ``X-Forwarded-For`` there when told to)."""
    return request.client.host if request.client else "unknown"


class Authenticator:
    def __init__(self, accounts: Accounts, *, limiter: FailureLimiter | None = None):
        self.accounts = accounts
        self.limiter = limiter or FailureLimiter(0)
        if self.limiter.on_limit is None:
            self.limiter.on_limit = lambda address: log.warning(
                "too many failed authentications from %s: refusing its failed attempts with 429 (at most %d a %g s)",
                address,
                self.limiter.limit,
                self.limiter.window,
            )
        self._secret = secrets.token_bytes(32)

    def issue_ticket(self, principal: Principal, prefix: str) -> str:
        body = _b64(
            json.dumps(
                {
                    "u": principal.user,
                    "g": principal.group,
                    "t": principal.token_id,
                    "p": prefix,
                    "e": int(time.time()) + TICKET_SECONDS,
                },
                separators=(",", ":"),
            ).encode()
        )
        sig = _b64(hmac.new(self._secret, body.encode(), hashlib.sha256).digest())
        return f"{body}.{sig}"

    def _from_ticket(self, ticket: str, path: str) -> Principal:
        try:
            body, sig = ticket.split(".", 1)
            want = _b64(hmac.new(self._secret, body.encode(), hashlib.sha256).digest())
            if not hmac.compare_digest(want, sig):
                raise ValueError("bad signature")
            claims = json.loads(_unb64(body))
        except (ValueError, json.JSONDecodeError) as exc:
            raise Unauthorized("the download ticket is invalid; ask for a new one", guess=True) from exc
        if claims["e"] < time.time():
            raise Unauthorized("the download ticket has expired; ask for a new one", guess=True)
        if not path.startswith(claims["p"]):
            raise Unauthorized("the download ticket is not valid for this URL", guess=True)
        return Principal(user=claims["u"], group=claims["g"], token_id=claims["t"])

    def principal(self, request: Request) -> Principal:
        """The caller of ``request``, or :class:`Unauthorized` (:class:`TooManyFailures` for an address
        that failed too often: a valid token or ticket is still served from it)."""
        try:
            return self._principal(request)
        except Unauthorized as exc:
            if not exc.extra.pop("guess", False):
                raise  # no credentials at all: nothing was guessed
            address = client_address(request)
            wait = self.limiter.failed(address)
            if wait is None:
                raise
            raise TooManyFailures(
                f"too many failed authentications from {address} (more than {self.limiter.limit} in "
                f"{self.limiter.window:g} s); wait {wait:g} s, and check the token: it is mistyped, "
                "revoked or expired",
                retry_after=int(wait),
            ) from None

    def _principal(self, request: Request) -> Principal:
        header = request.headers.get("authorization", "")
        if header:
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise Unauthorized("use the header 'Authorization: Bearer <token>'")
            who = self.accounts.authenticate(token.strip())
            if who is None:
                raise Unauthorized(
                    "the token is unknown or revoked; ask an administrator for a new one "
                    "(`ncaas admin issue-token USER`)",
                    guess=True,
                )
            return who
        ticket = request.query_params.get("ticket")
        if ticket:
            return self._from_ticket(ticket, request.url.path)
        raise Unauthorized(
            "authentication required: send 'Authorization: Bearer <token>' "
            "(tokens come from `ncaas admin issue-token USER`)"
        )
