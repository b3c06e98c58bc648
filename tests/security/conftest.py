"""The attack suite: every attack once found against ncaas, run against a real server and manager.

``site`` is a real ``ncaas serve`` on loopback (its job manager in the same process) over a
storage root with two groups: ``lab`` (user ann) and ``other`` (user bob). A test module gets
its own site; an attack must fail on the platform as it was before the fix.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ncaas.client import Client
from ncaas.server.accounts import Accounts
from ncaas.server.state import default_database_url
from ncaas.testing.servers import ServerProcess

SERVER_BLUEPRINTS = Path(__file__).resolve().parents[1] / "server_blueprints"


class Site:
    """A running server over a storage root, with a token and a client per group."""

    def __init__(self, base: Path, server: ServerProcess, tokens: dict[str, str]):
        self.base, self.server, self.root = base, server, server.root
        self.tokens = tokens  # group -> token of its user
        self.clients = {group: Client(server.url, token) for group, token in tokens.items()}

    def http(self, group: str | None) -> httpx.Client:
        """A bare HTTP client carrying ``group``'s token (None: no token)."""
        headers = {"Authorization": f"Bearer {self.tokens[group]}"} if group else {}
        return httpx.Client(base_url=self.server.url, headers=headers, timeout=60)

    def close(self) -> None:
        for client in self.clients.values():
            client.close()


def start_site(base: Path, *, env: dict[str, str] | None = None, extra: list[str] | None = None) -> Site:
    """A storage root under ``base`` with groups lab (ann) and other (bob), and its server."""
    root = base / "root"
    root.mkdir(parents=True)
    accounts = Accounts.from_url(default_database_url(str(root)))
    tokens: dict[str, str] = {}
    for group, user in (("lab", "ann"), ("other", "bob")):
        accounts.add_group(group)
        accounts.add_user(user, group)
        tokens[group] = accounts.issue_token(user).token
    accounts.engine.dispose()
    server = ServerProcess(root, env={"NCAAS_BLUEPRINTS": str(SERVER_BLUEPRINTS), **(env or {})}, extra=extra).start()
    return Site(base, server, tokens)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    site = start_site(tmp_path_factory.mktemp("security"))
    yield site
    site.close()
    code = site.server.stop()
    log = site.server.log()
    assert code in (0, -signal.SIGTERM), log  # uvicorn re-raises the signal it handled
    assert "Traceback" not in log, log


def finished(client: Client, job: dict[str, Any]) -> dict[str, Any]:
    """Wait for a job to end; returns its final detail."""
    return client.wait(job["id"])
