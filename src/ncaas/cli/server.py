"""``ncaas serve`` and ``ncaas admin ...``: the server's own commands.

They are added to the main CLI by :mod:`ncaas.cli.app`; nothing here imports
FastAPI until ``serve`` runs, so the rest of the CLI starts fast.
"""

from __future__ import annotations

import signal
import sys
from typing import Annotated

import typer
from rich.table import Table

from ..exceptions import NcaasError
from ..jobs.manager import manager_lock
from ..server.ratelimit import DEFAULT_AUTH_FAILURES
from ..server.space import DEFAULT_RESERVE
from ..storage import Storage, default_root
from .console import err, errors, out

__all__ = ["admin", "serve"]

RootOpt = Annotated[str, typer.Option("--root", envvar="NCAAS_ROOT", help="storage root (dir or URL)")]
DbOpt = Annotated[
    str | None,
    typer.Option(
        "--db",
        envvar="NCAAS_DB",
        help="SQLAlchemy URL of the job and account database, e.g. postgresql+psycopg://user@host/ncaas "
        "[default: <root>/.ncaas/jobs.sqlite]",
    ),
]

# Where a job manager runs its tasks: the same options on `ncaas manager` and `ncaas serve`.
ExecutorOpt = Annotated[
    str, typer.Option(help="where tasks run: local (this machine), ray (a Ray cluster) or slurm (a Slurm cluster)")
]
RayAddressOpt = Annotated[
    str | None, typer.Option(envvar="NCAAS_RAY_ADDRESS", help="Ray cluster to join: HEAD:PORT, or auto on a node")
]
RayMaxCpusOpt = Annotated[int | None, typer.Option(help="CPUs an autoscaling Ray cluster may grow to")]
RayS3SettingsOpt = Annotated[
    str | None,
    typer.Option(
        envvar="NCAAS_RAY_S3_SETTINGS",
        help="who gives Ray tasks their S3 endpoint and keys: server (this process's, sent with each "
        "task; the default) or node (each node's own: instance role, environment)",
    ),
]


SlurmProfileOpt = Annotated[
    str | None,
    typer.Option(
        envvar="NCAAS_SLURM_PROFILE",
        help="Slurm site profile (YAML or JSON): partition, account, qos, margins, sandbox, shared "
        "environment folder, pricing; see the README's Slurm section",
    ),
]


def _accounts(root: str, db: str | None):
    from ..server.accounts import Accounts
    from ..server.state import default_database_url

    return Accounts.from_url(db or default_database_url(Storage(root).url))


admin = typer.Typer(
    help="Accounts of an ncaas server (groups, users, API tokens, quotas) and its certificate keys.",
    no_args_is_help=True,
)


@errors
def serve(
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on")] = 8080,
    max_upload: Annotated[str, typer.Option(help="largest upload accepted, e.g. 500GB")] = "1TiB",
    min_free: Annotated[
        str,
        typer.Option(
            help="free space uploads must leave on the storage disk: a size (e.g. 10GB) or a "
            "percentage of the disk (e.g. 5%)"
        ),
    ] = DEFAULT_RESERVE,
    manager: Annotated[bool, typer.Option(help="run the job manager in the server process")] = True,
    auth_failures: Annotated[
        int,
        typer.Option(
            min=0,
            help="failed authentications a client address may make in a minute before its "
            "failed attempts are answered 429 (0: no limit)",
        ),
    ] = DEFAULT_AUTH_FAILURES,
    forwarded_allow_ips: Annotated[
        str | None,
        typer.Option(
            help="addresses of reverse proxies whose X-Forwarded-For gives the client's address "
            "(comma-separated, or '*'); by default the socket peer is the client"
        ),
    ] = None,
    max_submit_size: Annotated[
        str | None,
        typer.Option(
            envvar="NCAAS_MAX_SUBMIT_SIZE",
            help="largest submit file accepted; larger ones are rejected unread (default 1MiB)",
        ),
    ] = None,
    max_datasets: Annotated[
        int | None, typer.Option(envvar="NCAAS_MAX_DATASETS", help="most datasets one job may have (default 10000)")
    ] = None,
    executor: ExecutorOpt = "local",
    ray_address: RayAddressOpt = None,
    ray_max_cpus: RayMaxCpusOpt = None,
    ray_s3_settings: RayS3SettingsOpt = None,
    slurm_profile: SlurmProfileOpt = None,
    root: RootOpt = default_root(),
    db: DbOpt = None,
) -> None:
    """Serve the API and the web page (job manager included) until Ctrl-C."""
    from ..blueprint import parse_bytes
    from ..private import use_private_umask
    from ..server import serve as run_server
    from ..server.space import Reserve
    from ..server.state import ServerSettings, default_database_url
    from ..submission import SubmitLimits

    use_private_umask()  # uploads, results and the platform's state: readable by this user only

    try:
        max_bytes = parse_bytes(max_upload)
    except ValueError as exc:
        raise NcaasError(f"--max-upload: {exc}") from None
    try:
        Reserve.parse(min_free)
    except ValueError as exc:
        raise NcaasError(f"--min-free: {exc}") from None
    storage = Storage(root)
    if not manager and (executor != "local" or ray_address or ray_max_cpus or ray_s3_settings or slurm_profile):
        raise NcaasError(
            "--executor, --ray-* and --slurm-profile choose where the job manager runs tasks; drop --no-manager"
        )
    settings = ServerSettings(
        root=storage.url,
        database_url=db or default_database_url(storage.url),
        max_upload_bytes=max_bytes,
        run_manager=manager,
        auth_failures=auth_failures,
        min_free=min_free,
        submit_limits=SubmitLimits.from_env(max_submit_size, max_datasets),
    )
    lock = None
    if manager:
        lock = manager_lock(storage)
        if lock is None:
            err.print(
                "[yellow]another `ncaas manager` runs on this storage; the server submits jobs "
                "and that manager runs them[/yellow]"
            )
            settings.run_manager = False
    if settings.run_manager:
        from ..executors.pick import executor_for
        from ..jobs.owner import record_owner

        settings.executor = executor_for(
            executor,
            storage,
            ray_address=ray_address,
            ray_max_cpus=ray_max_cpus,
            ray_s3_settings=ray_s3_settings,
            slurm_profile=slurm_profile,
        )
        record_owner(storage, str(settings.database_url), server=f"http://{host}:{port}")
        # Joining Ray made SIGTERM exit with code 15; the server stops on it as it does on Ctrl-C
        # (uvicorn hands the signal on once it has shut down), then lets go of the cluster, exit 0.
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    from ..server.uploads import keep_freed_memory_for_streaming

    keep_freed_memory_for_streaming()
    try:
        run_server(settings, host=host, port=port, forwarded_allow_ips=forwarded_allow_ips)
    finally:
        if settings.executor is not None:
            settings.executor.close()  # Ray: the manager's tasks stop with it and are retried at its next start
        if lock is not None:
            lock.close()


@admin.command("add-group")
@errors
def add_group(
    name: Annotated[str, typer.Argument(help="group name (letters, digits, . _ -)")],
    root: RootOpt = default_root(),
    db: DbOpt = None,
) -> None:
    """Create a group: its members share one private storage area and its jobs."""
    _accounts(root, db).add_group(name)
    out.print(f"group {name} created")


@admin.command("set-quota")
@errors
def set_quota(
    group: Annotated[str, typer.Argument(help="group name")],
    size: Annotated[str, typer.Argument(help="what its storage may hold, e.g. 500GB; 'none' lifts it")],
    root: RootOpt = default_root(),
    db: DbOpt = None,
) -> None:
    """Limit a group's storage (inputs, configs, results): uploads that would go over are refused."""
    from ..blueprint import parse_bytes

    if size.strip().lower() == "none":
        quota = None
    else:
        try:
            quota = parse_bytes(size)
        except ValueError as exc:
            raise NcaasError(f"SIZE: {exc}; or 'none' to lift the quota") from None
    _accounts(root, db).set_quota(group, quota)
    out.print(f"group {group}: " + ("no quota" if quota is None else f"quota {quota} bytes ({size.strip()})"))


@admin.command("add-user")
@errors
def add_user(
    name: Annotated[str, typer.Argument(help="user name")],
    group: Annotated[str, typer.Option("--group", "-g", help="the user's group")],
    root: RootOpt = default_root(),
    db: DbOpt = None,
) -> None:
    """Create a user in a group."""
    _accounts(root, db).add_user(name, group)
    out.print(f"user {name} created in group {group}")


@admin.command("issue-token")
@errors
def issue_token(
    user: Annotated[str, typer.Argument(help="user name")], root: RootOpt = default_root(), db: DbOpt = None
) -> None:
    """Issue an API token for a user; it is printed once and only its hash is kept."""
    issued = _accounts(root, db).issue_token(user)
    out.print(f"token {issued.token_id} for {issued.user} (group {issued.group}); store it now, it is not shown again:")
    out.print(issued.token, markup=False, highlight=False, soft_wrap=True)


@admin.command("revoke-token")
@errors
def revoke_token(
    token: Annotated[str, typer.Argument(help="the token, or its id")],
    root: RootOpt = default_root(),
    db: DbOpt = None,
) -> None:
    """Revoke a token: every later request with it is refused."""
    token_id = _accounts(root, db).revoke_token(token)
    out.print(f"token {token_id} revoked")


@admin.command("tokens")
@errors
def tokens(root: RootOpt = default_root(), db: DbOpt = None) -> None:
    """List issued tokens (ids, owners, revoked or not; never the tokens)."""
    table = Table("token id", "user", "issued", "revoked")
    import time

    for t in _accounts(root, db).tokens():
        table.add_row(
            t["token_id"],
            t["user"],
            time.strftime("%Y-%m-%d %H:%M", time.localtime(t["created_ms"] / 1000)),
            "yes" if t["revoked"] else "no",
        )
    out.print(table)


@admin.command("keys")
@errors
def keys(root: RootOpt = default_root()) -> None:
    """List the keys that verify certificates (the current one signs new certificates)."""
    from ..provenance.signing import CertificateKeys

    store = CertificateKeys(Storage(root).state_dir())
    current = store.current_id()
    for key_id in store.ids():
        out.print(f"{key_id}{'  (signs new certificates)' if key_id == current else ''}")


@admin.command("rotate-key")
@errors
def rotate_key(root: RootOpt = default_root()) -> None:
    """Make a new certificate signing key; certificates signed before still verify until retired."""
    from ..provenance.signing import CertificateKeys

    key_id = CertificateKeys(Storage(root).state_dir()).rotate()
    out.print(f"key {key_id} now signs new certificates; the older keys still verify what they signed")


@admin.command("retire-key")
@errors
def retire_key(
    key_id: Annotated[str, typer.Argument(help="the key's id (`ncaas admin keys`)")], root: RootOpt = default_root()
) -> None:
    """Delete a (compromised) signing key: every certificate it signed is refused from now on."""
    from ..provenance.signing import CertificateKeys

    CertificateKeys(Storage(root).state_dir()).retire(key_id)
    out.print(f"key {key_id} retired")
