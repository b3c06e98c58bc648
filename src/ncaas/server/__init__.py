"""The ncaas server: a FastAPI app with accounts, group-private storage, uploads,
jobs with live events, results, and a single web page (``static/``, no build step).

``ncaas serve`` runs it with uvicorn and the job manager in the same process.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ServerSettings", "create_app", "serve"]


def __getattr__(name: str) -> Any:
    # FastAPI is imported only when the server is used, so the CLI starts fast.
    if name == "create_app":
        from .app import create_app

        return create_app
    if name == "ServerSettings":
        from .state import ServerSettings

        return ServerSettings
    raise AttributeError(name)


def serve(
    settings: Any,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    log_level: str = "info",
    forwarded_allow_ips: str | None = None,
) -> None:
    """Serve until interrupted (Ctrl-C / SIGTERM stop it cleanly, manager included).

    A client's address (what failed authentications are counted by) is the socket peer's, unless
    ``forwarded_allow_ips`` names the reverse proxies whose ``X-Forwarded-For`` is believed.
    """
    import logging

    import uvicorn

    from .app import create_app

    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    logger = logging.getLogger("ncaas")
    logger.addHandler(handler)
    logger.setLevel(log_level.upper())
    app = create_app(settings)
    # Idle keep-alive connections live longer than clients pause between polls, even on a busy
    # machine, so a client never reuses a connection the server is closing at that moment.
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        access_log=False,
        timeout_graceful_shutdown=5,
        timeout_keep_alive=75,
        proxy_headers=forwarded_allow_ips is not None,
        forwarded_allow_ips=forwarded_allow_ips,
    )
    server = uvicorn.Server(config)
    print(
        f"ncaas server on http://{host}:{port}/  (storage {settings.root}, database {_redact(settings.database_url)})",
        flush=True,
    )
    server.run()


def _redact(url: str | None) -> str:
    """The database URL without its password."""
    if not url or "@" not in url or "://" not in url:
        return str(url)
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}" if ":" in creds else url
