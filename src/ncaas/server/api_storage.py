"""API routes for analyses, datasets (uploads), configs and the caller."""

from __future__ import annotations

import json
import posixpath
from typing import Annotated, Any

import yaml
from fastapi import APIRouter, Body, Depends, Header, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import ClientDisconnect

from ..exceptions import SpecialFileRefused
from ..storage import check_user_path
from ..submission import config_problems
from .accounts import Principal
from .errors import BadRequest, NotFound, TooLarge
from .state import ServerState, caller, get_state

__all__ = ["router"]

router = APIRouter(prefix="/api")
Caller = Annotated[Principal, Depends(caller)]
State = Annotated[ServerState, Depends(get_state)]


@router.get("/me", tags=["account"], summary="Who the token belongs to")
def me(who: Caller) -> dict:
    return {"user": who.user, "group": who.group, "token_id": who.token_id}


class TicketRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt field is an error, not ignored

    path: str = Field(description="URL path prefix the ticket opens, e.g. /api/jobs/<id>/")


@router.post(
    "/tickets", tags=["account"], summary="A short-lived signed URL parameter for downloads opened by a browser"
)
def ticket(body: TicketRequest, who: Caller, state: State) -> dict:
    if not body.path.startswith("/api/jobs/") or ".." in body.path:
        raise BadRequest("tickets are only issued for paths under /api/jobs/<id>/")
    job_id = body.path.removeprefix("/api/jobs/").split("/", 1)[0]
    state.extras["jobs"].job_for(who, job_id)  # refuses other groups' jobs
    return {"ticket": state.auth.issue_ticket(who, body.path), "expires_in": 300}


# -- analyses ----------------------------------------------------------------------------
def _describe(loaded) -> dict[str, Any]:
    bp = loaded.blueprint
    return {
        "name": bp.name,
        "version": bp.version,
        "description": bp.description,
        "config_schema": bp.config_schema,
        "default_config": bp.default_config,
        "resources": bp.resources.model_dump(mode="json"),
        "sha256": loaded.sha256,
        "git_commit": loaded.git_commit,
        "path": str(loaded.path),
        "review": bp.review is not None,  # its results open in the review page (docs/review.md)
    }


@router.get(
    "/analyses", tags=["analyses"], summary="Analyses the caller's group may run, with config schema and defaults"
)
def list_analyses(who: Caller, state: State) -> list[dict]:
    return [
        _describe(bp)
        for bp in (state.registry.blueprints[n] for n in state.registry.names())
        if bp.blueprint.access.allows(who.group)
    ]


@router.get("/analyses/{name}", tags=["analyses"], summary="One analysis")
def get_analysis(name: str, who: Caller, state: State) -> dict:
    return _describe(state.analysis_for(who, name))


# -- datasets ----------------------------------------------------------------------------
@router.get("/inputs", tags=["datasets"], summary="Datasets in the group's inputs/ (each a file or a folder)")
def list_inputs(who: Caller, state: State) -> list[dict]:
    base = state.storage.area(who.group, "inputs")
    if not state.storage.isdir(base):
        return []
    out = []
    for entry in sorted(state.storage.fs.ls(base, detail=True), key=lambda e: e["name"]):
        name = posixpath.basename(entry["name"].rstrip("/"))
        try:  # a link is listed as one, never followed (its target may be another group's file)
            kind = state.storage.kind(entry["name"]) if state.storage.is_local else None
        except FileNotFoundError:
            continue
        if kind not in (None, "file", "folder"):
            out.append({"name": name, "kind": kind, "files": 0, "size": 0})
        elif entry["type"] == "directory":
            files = state.storage.files(entry["name"])
            size = sum(state.storage.size(f) for f in files)
            out.append({"name": name, "kind": "folder", "files": len(files), "size": size})
        else:
            out.append({"name": name, "kind": "file", "files": 1, "size": int(entry["size"])})
    return out


@router.get(
    "/inputs/{name:path}",
    tags=["datasets"],
    summary="One dataset: kind, size, files (each with its size, and its SHA-256 on request), "
    "and the SHA-256 of a file",
)
def input_info(
    name: str,
    who: Caller,
    state: State,
    checksums: Annotated[
        bool, Query(description="give the SHA-256 of every file of a folder (reads the whole dataset)")
    ] = False,
) -> dict:
    path = state.storage.resolve(who.group, "inputs", name)
    if not state.storage.exists(path):
        raise NotFound(f"no dataset {name!r} in {who.group}/inputs/")
    if state.storage.isdir(path):
        if checksums:  # links and special files inside are listed as such, never followed or opened
            contents = state.storage.describe_tree(path)
        else:
            contents = [
                {"path": posixpath.relpath(f, path), "size": state.storage.size(f)} for f in state.storage.files(path)
            ]
        return {
            "name": name,
            "kind": "folder",
            "files": len(contents),
            "size": sum(e.get("size", 0) for e in contents),
            "contents": contents,
        }
    try:
        return {
            "name": name,
            "kind": "file",
            "files": 1,
            "size": state.storage.size(path),
            "sha256": state.storage.sha256(path),
        }
    except SpecialFileRefused as exc:  # a FIFO or device: described, not opened
        return {"name": name, "kind": exc.kind, "files": 0, "size": 0}


class NewUpload(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt field is an error, not ignored

    path: str = Field(description="where the file goes, relative to inputs/ (e.g. exp1/session2/movie.tif)")
    size: int = Field(description="total bytes of the file")
    crc32c: str | None = Field(
        None, description="CRC-32C of the whole file (8 hexadecimal digits), checked on completion"
    )
    sha256: str | None = Field(
        None, description="SHA-256 of the whole file, computed while the bytes arrive and checked on completion"
    )
    overwrite: bool = False


@router.post("/uploads", tags=["datasets"], status_code=201, summary="Start a resumable upload")
def create_upload(body: NewUpload, who: Caller, state: State) -> dict:
    return state.uploads.create(
        who, path=body.path, size=body.size, crc32c=body.crc32c, sha256=body.sha256, overwrite=body.overwrite
    ).as_dict()


@router.get("/uploads", tags=["datasets"], summary="Unfinished uploads of the group (to resume them)")
def pending_uploads(who: Caller, state: State) -> list[dict]:
    return [u.as_dict() for u in state.uploads.pending(who)]


@router.get("/uploads/{upload_id}", tags=["datasets"], summary="State of an upload: bytes received")
def get_upload(upload_id: str, who: Caller, state: State) -> dict:
    return state.uploads.get(who, upload_id).as_dict()


_RAW_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    }
}


@router.put(
    "/uploads/{upload_id}",
    tags=["datasets"],
    openapi_extra=_RAW_BODY,
    summary="Append bytes at offset (streamed); resend from the returned offset after a failure",
)
async def put_upload(
    upload_id: str,
    request: Request,
    who: Caller,
    state: State,
    offset: Annotated[int, Query(ge=0)] = 0,
    x_chunk_crc32c: Annotated[
        str | None, Header(description="CRC-32C of this request's bytes: a corrupted chunk is refused (422)")
    ] = None,
    x_chunk_sha256: Annotated[
        str | None, Header(description="SHA-256 of this request's bytes, instead of the CRC-32C")
    ] = None,
) -> dict:
    info = state.uploads.get(who, upload_id)
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > info.size - offset >= 0:
        raise TooLarge(
            f"upload {upload_id} expects {info.size - offset} more bytes from offset "
            f"{offset}; this request carries {length}"
        )
    try:
        result = await state.uploads.receive(
            who, upload_id, offset, request.stream(), chunk_crc32c=x_chunk_crc32c, chunk_sha256=x_chunk_sha256
        )
    except ClientDisconnect:
        raise BadRequest(
            "the connection dropped during the upload; ask GET /api/uploads/{id} for the offset and resume"
        ) from None
    return result.as_dict()


class CompleteUpload(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt field is an error, not ignored

    crc32c: str | None = Field(None, description="CRC-32C of the whole file (8 hexadecimal digits)")
    sha256: str | None = Field(
        None, description="SHA-256 of the whole file (costs the server a second read unless given on creation)"
    )


@router.post(
    "/uploads/{upload_id}/complete", tags=["datasets"], summary="Verify the checksums and move the file into inputs/"
)
async def complete_upload(upload_id: str, who: Caller, state: State, body: CompleteUpload | None = None) -> dict:
    body = body or CompleteUpload()
    return (await state.uploads.complete(who, upload_id, crc32c=body.crc32c, sha256=body.sha256)).as_dict()


@router.delete("/uploads/{upload_id}", tags=["datasets"], status_code=204, summary="Abandon an upload")
def abort_upload(upload_id: str, who: Caller, state: State) -> None:
    state.uploads.abort(who, upload_id)


# -- configs -----------------------------------------------------------------------------
def _config_path(state: ServerState, who: Principal, name: str) -> str:
    rel = check_user_path(name, "configs")
    if "/" in rel or not rel.endswith((".json", ".yaml", ".yml")):
        raise BadRequest(f"config name {name!r} must be a plain file name ending in .json, .yaml or .yml")
    return state.storage.resolve(who.group, "configs", rel)


@router.get("/configs", tags=["configs"], summary="Configs saved in the group's configs/")
def list_configs(who: Caller, state: State) -> list[str]:
    base = state.storage.area(who.group, "configs")
    return [posixpath.relpath(p, base) for p in state.storage.files(base)] if state.storage.isdir(base) else []


@router.get("/configs/{name}", tags=["configs"], summary="One saved config")
def get_config(name: str, who: Caller, state: State) -> dict:
    path = _config_path(state, who, name)
    if not state.storage.exists(path):
        raise NotFound(f"no config {name!r} in {who.group}/configs/")
    return yaml.safe_load(state.storage.read_text(path)) or {}


@router.put(
    "/configs/{name}",
    tags=["configs"],
    summary="Save a config (JSON object); with ?analysis= it is checked against that schema first",
)
def put_config(
    name: str, who: Caller, state: State, config: Annotated[dict[str, Any], Body()], analysis: str | None = None
) -> dict:
    path = _config_path(state, who, name)
    if analysis is not None:
        bp = state.analysis_for(who, analysis).blueprint
        problems = config_problems({**bp.default_config, **config}, bp.config_schema)
        if problems:
            raise BadRequest("; ".join(problems), problems=problems)
    text = json.dumps(config, indent=2) if name.endswith(".json") else yaml.safe_dump(config, sort_keys=False)
    state.storage.write_text(path, text)
    return {"name": posixpath.basename(path), "config": config}
