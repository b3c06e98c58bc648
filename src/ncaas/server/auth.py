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
import secrets
import time

from fastapi import Request

from .accounts import Accounts, Principal
from .errors import Unauthorized

__all__ = ["Authenticator"]

TICKET_SECONDS = 300


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Authenticator:
    def __init__(self, accounts: Accounts):
        self.accounts = accounts
        self._secret = secrets.token_bytes(32)

    def issue_ticket(self, principal: Principal, prefix: str) -> str:
        body = _b64(json.dumps(
            {"u": principal.user, "g": principal.group, "t": principal.token_id,
             "p": prefix, "e": int(time.time()) + TICKET_SECONDS},
            separators=(",", ":")).encode())
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
            raise Unauthorized("the download ticket is invalid; ask for a new one") from exc
        if claims["e"] < time.time():
            raise Unauthorized("the download ticket has expired; ask for a new one")
        if not path.startswith(claims["p"]):
            raise Unauthorized("the download ticket is not valid for this URL")
        return Principal(user=claims["u"], group=claims["g"], token_id=claims["t"])

    def principal(self, request: Request) -> Principal:
        """The caller of ``request``, or :class:`Unauthorized`."""
        header = request.headers.get("authorization", "")
        if header:
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise Unauthorized("use the header 'Authorization: Bearer <token>'")
            who = self.accounts.authenticate(token.strip())
            if who is None:
                raise Unauthorized("the token is unknown or revoked; ask an administrator for a new one "
                                   "(`ncaas admin issue-token USER`)")
            return who
        ticket = request.query_params.get("ticket")
        if ticket:
            return self._from_ticket(ticket, request.url.path)
        raise Unauthorized("authentication required: send 'Authorization: Bearer <token>' "
                           "(tokens come from `ncaas admin issue-token USER`)")
