"""Security headers on every response the server sends: API, web page, static files, errors.

The web page (``static/``) loads its one script and one style sheet from the
server itself, sets no inline script, style or event handler, and shows images
(QC figures) from ``/api``; so everything but the server's own origin is
refused (``PAGE_POLICY``), and no other site may frame it (clickjacking). The
interactive API documentation (``/docs``, ``/redoc``) is FastAPI's page, which
loads its viewer from a CDN with an inline script; it holds no data, so it gets
a policy that allows exactly that (``DOCS_POLICY``).

A result file is what an analysis wrote: it could be HTML or SVG with script in
it. Its route sets its own, sandboxing policy (``FILE_POLICY``), which this
middleware leaves in place.
"""

from __future__ import annotations

__all__ = ["DOCS_POLICY", "FILE_POLICY", "PAGE_POLICY", "SECURITY_HEADERS", "SecurityHeaders"]

# img-src blob: shows images the page fetched itself with the caller's token (the TCO figure)
PAGE_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob:; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
# A result file is shown only as what it is (an image), never as a page able to run script: ``sandbox``
# gives it an origin of its own even when it is opened in a tab of its own.
FILE_POLICY = "sandbox; default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'; frame-ancestors 'none'"
_CDN = "https://cdn.jsdelivr.net"
DOCS_POLICY = (
    f"default-src 'self'; script-src 'self' 'unsafe-inline' {_CDN}; style-src 'self' 'unsafe-inline' "
    f"{_CDN} https://fonts.googleapis.com; font-src 'self' https://fonts.gstatic.com; "
    "img-src 'self' data: https://fastapi.tiangolo.com https://cdn.redoc.ly; worker-src 'self' blob:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)
_DOCS_PATHS = ("/docs", "/redoc")

SECURITY_HEADERS = {
    "Content-Security-Policy": PAGE_POLICY,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def _headers_for(path: str) -> list[tuple[bytes, bytes]]:
    policy = DOCS_POLICY if path.startswith(_DOCS_PATHS) else PAGE_POLICY
    return [
        (name.lower().encode(), (policy if name == "Content-Security-Policy" else value).encode())
        for name, value in SECURITY_HEADERS.items()
    ]


class SecurityHeaders:
    """ASGI middleware adding :data:`SECURITY_HEADERS` to every HTTP response that lacks them."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        extra = _headers_for(scope.get("path", ""))

        async def with_headers(message):
            if message["type"] == "http.response.start":
                have = {name.lower() for name, _ in message.get("headers", [])}
                message["headers"] = [*message.get("headers", []), *(h for h in extra if h[0] not in have)]
            await send(message)

        await self.app(scope, receive, with_headers)
