"""The CLI's commands run against a server (``ncaas --server URL --token T ...``).

Each function mirrors the embedded command of the same name in
:mod:`ncaas.cli` and prints the same thing, using the same helpers, from what
the API returns instead of what the local storage and job database hold.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer
import yaml
from rich.text import Text

from ..certificate import load_certificate
from ..client import Client
from ..display import Watch, analyses_table, jobs_table, print_job, print_rerun, styled
from ..exceptions import NcaasError, StorageError, SubmissionRejected
from ..jobs.states import JOB_TERMINAL
from ..localfolder import folder_files
from ..storage import Storage

__all__ = ["Remote", "LOCAL_ONLY", "run_remote"]

# Commands that act on this machine even when --server is given.
LOCAL_ONLY = {"blueprint_validate", "serve", "add_group", "add_user", "issue_token", "revoke_token", "tokens",
              "env_build", "env_verify", "env_lock"}


@dataclass(frozen=True)
class Remote:
    server: str
    token: str | None


def _cli():
    from .. import cli

    return cli


def run_remote(command: str, remote: Remote, kwargs: dict[str, Any]) -> Any:
    """Run ``command`` (the embedded command's function name) against ``remote``."""
    if not remote.token:
        raise NcaasError("--server needs a token too: add --token TOKEN (or set NCAAS_TOKEN); "
                         "an administrator issues one with `ncaas admin issue-token USER`")
    handler = _COMMANDS.get(command)
    if handler is None:
        raise NcaasError(f"`{command.replace('_', ' ')}` cannot run against a server")
    with Client(remote.server, remote.token) as client:
        return handler(client, **kwargs)


# -- commands ------------------------------------------------------------------------------
def analyses(client: Client) -> None:
    _cli().out.print(analyses_table(client.analyses()))


def _upload_input(client: Client, item: str, known: dict[str, dict]) -> str:
    local = Path(item)
    if not local.exists():
        return item  # a name already on the server; validation checks it
    name = local.resolve().name
    if name in known:
        if not _same_as_stored(client, local, name, known[name]["kind"]):
            raise StorageError(f"{known[name]['group']}/inputs/{name} already exists with different content; "
                               f"rename your local {'folder' if local.is_dir() else 'file'} or submit the stored "
                               "one by name")
        return name
    return client.upload_dataset(local, name, left_out=lambda paths: _cli().print_left_out(name, paths))


def _same_as_stored(client: Client, local: Path, name: str, kind: str) -> bool:
    """Whether the stored dataset ``name`` holds what ``local`` would upload (a folder: the same
    files, hidden ones left out, with the same sizes and SHA-256s)."""
    if not local.is_dir():
        return kind == "file" and client.input_info(name).get("sha256") == Storage(local.parent).sha256(str(local))
    if kind != "folder":
        return False
    mine = folder_files(local)
    sizes = {mine.relative(f): f.stat().st_size for f in mine.files}
    if {e["path"]: e["size"] for e in client.input_info(name)["contents"]} != sizes:
        return False  # told apart without reading a file
    stored = client.input_info(name, checksums=True)["contents"]
    return {e["path"]: e["sha256"] for e in stored} == \
        {e["path"]: e["sha256"] for e in _cli().describe_folder(local)}


def _upload_config(client: Client, item: str, group: str) -> str:
    local = Path(item)
    if not local.exists():
        return item
    name = local.resolve().name
    try:
        config = yaml.safe_load(local.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise NcaasError(f"{local} is not valid YAML/JSON: {exc}") from None
    if not isinstance(config, dict):
        raise NcaasError(f"{local} must hold a mapping of option: value")
    if name in client.configs():
        if client.config(name) != config:
            raise StorageError(f"{group}/configs/{name} already exists with different content; rename your "
                               "local file or submit the stored one by name")
        return name
    client.save_config(name, config)
    return name


def _watch(client: Client, detail: dict[str, Any]) -> dict[str, Any]:
    with Watch(_cli().out) as watch:
        watch.update(detail, force=True)
        detail = client.wait(detail["id"], on_status=watch.update)
        watch.finish(detail)
    return detail


def submit(client: Client, *, analysis: str, data: list[str], config: str | None, group: str, wait: bool,
           name: str | None, **_: Any) -> None:
    cli = _cli()
    me = client.me()
    if group not in ("default", me["group"]):
        raise NcaasError(f"your token belongs to group {me['group']!r}, not {group!r}; drop --group or use "
                         "a token of that group")
    known = {d["name"]: {**d, "group": me["group"]} for d in client.inputs()}
    datanames = [_upload_input(client, item, known) for item in data]
    configname = _upload_config(client, config, me["group"]) if config is not None else None
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    name = name or f"{analysis}-{stamp}-{secrets.token_hex(2)}"
    try:
        detail = client.submit(analysis, datanames, configname=configname, name=name)
    except SubmissionRejected as exc:
        job = getattr(exc, "job", None)
        if job is None:
            raise
        cli.err.print(f"[red]submission rejected[/red] (job {job['id']}; details in "
                      f"{job['results_dir']}/error.txt):")
        for problem in exc.problems:
            cli.err.print(f"  - {problem}")
        raise typer.Exit(SubmissionRejected.exit_code) from None
    results = detail["results_dir"]
    cli.out.print(f"job [bold]{detail['id']}[/bold]: {analysis} on {len(datanames)} dataset(s); results in {results}")
    if not wait:
        cli.out.print("a running `ncaas manager` will run it; follow with `ncaas status " + detail["id"] + "`")
        return
    detail = _watch(client, detail)
    cli.out.print(f"{styled(detail['state'])}: results in {results}, certificate {results}/certificate.txt")
    raise typer.Exit(0 if detail["state"] == "succeeded" else 1)


def status(client: Client, *, job_id: str | None, limit: int, **_: Any) -> None:
    cli = _cli()
    if job_id is None:
        cli.out.print(jobs_table(client.jobs(limit=limit)))
        return
    detail = client.job(job_id)
    print_job(cli.out, detail, client.story(detail["id"]) if detail["state"] != "rejected" else [])


def logs(client: Client, *, job_id: str, dataset: str | None, follow: bool, **_: Any) -> None:
    cli = _cli()
    detail = client.job(job_id)
    tasks = detail["tasks"]  # a dataset by its name in inputs/, else by its key
    names = [t["dataset"] for t in tasks if dataset in (None, t["input"])] or \
        [t["dataset"] for t in tasks if t["dataset"] == dataset]
    if dataset is not None and not names:
        raise NcaasError(f"job {detail['id']} has no dataset {dataset!r}")
    offsets = dict.fromkeys(names, 0)
    while True:
        for name in names:
            chunk = client.log_bytes(detail["id"], name, offset=offsets[name])
            offsets[name] += len(chunk)
            for line in chunk.decode("utf-8", "replace").splitlines():
                text = Text.assemble((name, "dim"), " | ", line) if len(names) > 1 else Text(line)
                cli.out.print(text, highlight=False, soft_wrap=True)
        current = client.job(detail["id"])
        if not follow or current["state"] in JOB_TERMINAL:
            return
        time.sleep(0.25)


def cancel(client: Client, *, job_id: str, **_: Any) -> None:
    cli = _cli()
    detail = client.cancel(job_id)
    if detail["state"] in JOB_TERMINAL:
        cli.out.print(f"job {detail['id']} is already over ({styled(detail['state'])})")
        return
    cli.out.print(f"cancelling job {detail['id']}; running tasks are being stopped")


def results(client: Client, *, job_id: str, to: Path | None, **_: Any) -> None:
    cli = _cli()
    detail = client.job(job_id)
    if to is not None:
        client.download_results(detail["id"], to)
        cli.out.print(f"copied {detail['results_dir']} to {to}")
        return
    cli.out.print(f"job {detail['id']} ({styled(detail['state'])}): {detail['results_dir']}")
    for f in client.files(detail["id"]):
        cli.out.print(f"  {f['size']:>12}  {f['path']}")


def rerun(client: Client, *, certificate: Path, **_: Any) -> None:
    cli = _cli()
    cert = load_certificate(certificate)
    cli.out.print(f"rerunning job {cert['job']['id']} ({cert['blueprint'].get('name')}) ...")
    job = client.rerun(cert)
    cli.out.print(f"  job {job['id']} started; results in {job['results_dir']}")
    job = client.wait(job["id"])
    rows = client.compare(job["id"], cert)
    ok = print_rerun(cli.out, job, rows)
    raise typer.Exit(0 if ok else 1)


def run_manager(client: Client, **_: Any) -> None:
    raise NcaasError(f"the server at {client.url} runs its own job manager; run `ncaas manager` on the "
                     "machine that holds the storage instead")


_COMMANDS = {"analyses": analyses, "submit": submit, "status": status, "logs": logs, "cancel": cancel,
             "results": results, "rerun": rerun, "run_manager": run_manager}
