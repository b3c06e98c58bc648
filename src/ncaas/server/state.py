"""What every request handler reaches through ``request.app.state.ncaas``."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from ..blueprint import BlueprintRegistry, LoadedBlueprint
from ..executors.base import Executor
from ..jobs.db import default_db_url
from ..private import private_dir
from ..storage import Storage
from ..submission import SubmitLimits
from .accounts import Accounts, Principal
from .auth import Authenticator
from .errors import NotFound
from .ratelimit import DEFAULT_AUTH_FAILURES
from .space import DEFAULT_RESERVE
from .uploads import Uploads

__all__ = ["ServerSettings", "ServerState", "caller", "get_state"]

DEFAULT_MAX_UPLOAD = 1 << 40  # 1 TiB


def default_database_url(root: str) -> str:
    """``NCAAS_DB``, else the job database the embedded CLI and ``ncaas manager`` use for ``root``
    (``<root>/.ncaas/jobs.sqlite``; for a root in object storage, in its state folder on this machine)."""
    if os.environ.get("NCAAS_DB"):
        return os.environ["NCAAS_DB"]
    if "://" not in root:
        return default_db_url(str(Path(root).resolve()))
    return f"sqlite:///{private_dir(Storage(root).state_dir()) / 'jobs.sqlite'}"


@dataclass
class ServerSettings:
    """How a server is set up. ``database_url`` defaults to SQLite in the root."""

    root: str
    database_url: str | None = None
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD
    run_manager: bool = True
    stale_upload_days: float = 7.0  # unfinished uploads untouched this long are dropped at start
    auth_failures: int = DEFAULT_AUTH_FAILURES  # failed authentications a client address may make a minute
    min_free: str = DEFAULT_RESERVE  # free space uploads leave on the disk: a size, or a percentage ("5%")
    submit_limits: SubmitLimits | None = None  # None: from the environment (NCAAS_MAX_SUBMIT_SIZE, ...)
    executor: Executor | None = None  # where the manager runs tasks (None: this machine)

    def __post_init__(self) -> None:
        if self.database_url is None:
            self.database_url = default_database_url(self.root)


@dataclass
class ServerState:
    settings: ServerSettings
    storage: Storage
    registry: BlueprintRegistry
    accounts: Accounts
    auth: Authenticator
    uploads: Uploads
    extras: dict = field(default_factory=dict)

    def analysis_for(self, who: Principal, name: str) -> LoadedBlueprint:
        """The blueprint ``name`` if the caller's group may use it."""
        loaded = self.registry.get(name)
        if loaded is None or not loaded.blueprint.access.allows(who.group):
            raise NotFound(
                f"no analysis {name!r} available to group {who.group!r}; GET /api/analyses lists the ones you may use"
            )
        return loaded


def get_state(request: Request) -> ServerState:
    return request.app.state.ncaas


_bearer = HTTPBearer(auto_error=False, description="A token from `ncaas admin issue-token USER`.")


def caller(request: Request, _creds: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> Principal:
    """The authenticated caller; every API route depends on this."""
    return get_state(request).auth.principal(request)
