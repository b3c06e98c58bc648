"""Which job manager runs a storage root, as this machine can tell.

One manager runs a storage root (``manager_lock``). For a root in object storage its job
database and state folder are on the manager's machine, not in the bucket, so a job
submitted elsewhere into the embedded database of another machine would never run, and
would leave a results folder behind. ``ncaas manager`` and ``ncaas serve`` therefore record,
beside their lock, which process they are and which job database they use; the embedded
CLI acts on a remote root only when that record names a live process of this machine
using the same database. Everywhere else it is told to go through the server.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import dataclass

import psutil

from ..exceptions import NcaasError
from ..private import private_dir
from ..storage import Storage

__all__ = ["ManagerElsewhere", "Owner", "owner_of", "record_owner", "require_owner_here"]

RECORD = "manager.json"


class ManagerElsewhere(NcaasError):
    """The storage root's jobs are run by no manager of this machine: use the server."""


@dataclass(frozen=True)
class Owner:
    pid: int
    db_digest: str  # sha256 of the job database URL (the URL may hold a password)
    db_shown: str  # the URL without its password
    server: str | None  # the server's URL, when the manager runs inside ``ncaas serve``


def _digest(db_url: str) -> str:
    return hashlib.sha256(db_url.encode()).hexdigest()


def _shown(url: str) -> str:
    if "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}" if ":" in creds else url


def record_owner(storage: Storage, db_url: str, *, server: str | None = None) -> None:
    """Say that this process (holding the manager lock) runs ``storage`` with ``db_url``."""
    me = psutil.Process()
    record = {
        "pid": me.pid,
        "start": me.create_time(),
        "db": _digest(db_url),
        "db_shown": _shown(db_url),
        "server": server,
    }
    path = private_dir(storage.state_dir()) / RECORD
    tmp = path.with_name(f".{RECORD}.{me.pid}")
    tmp.write_text(json.dumps(record))
    os.replace(tmp, path)


def owner_of(storage: Storage) -> Owner | None:
    """The live manager of this machine that runs ``storage``, if there is one."""
    try:
        record = json.loads((storage.state_dir() / RECORD).read_text())
        alive = abs(psutil.Process(record["pid"]).create_time() - record["start"]) < 0.5
    except (OSError, ValueError, KeyError, TypeError, psutil.Error):
        return None
    if not alive:
        with contextlib.suppress(OSError):
            (storage.state_dir() / RECORD).unlink()
        return None
    return Owner(record["pid"], record["db"], record["db_shown"], record.get("server"))


def require_owner_here(storage: Storage, db_url: str, command: str) -> None:
    """Refuse (ManagerElsewhere) a job command run embedded on a remote root that no manager of
    this machine runs with the same job database: its jobs would never run, or not be found."""
    if storage.is_local:
        return
    owner = owner_of(storage)
    via = f"ncaas --server URL --token TOKEN {command}"
    if owner is None:
        raise ManagerElsewhere(
            f"{storage.url} is not run by a job manager on this machine, so `ncaas {command}` cannot act on it "
            f"from here (a job written here would never run); go through the server that runs it: `{via}` "
            "(or NCAAS_SERVER / NCAAS_TOKEN)"
        )
    if owner.db_digest != _digest(db_url):
        where = f"; or through its server: `{via}` with --server {owner.server}" if owner.server else ""
        raise ManagerElsewhere(
            f"the job manager of {storage.url} on this machine (process {owner.pid}) uses the job database "
            f"{owner.db_shown}, not {_shown(db_url)}; pass the same --db (or NCAAS_DB){where}"
        )
