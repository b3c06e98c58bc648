"""Group storage on any S3-compatible service (AWS S3, MinIO, SeaweedFS, Ceph...) through s3fs.

:class:`ncaas.storage.Storage` picks this backend for ``s3://bucket/prefix`` roots.
Credentials come from where every S3 client looks for them: ``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY`` (/ ``AWS_SESSION_TOKEN``), ``AWS_PROFILE`` and the
``~/.aws/credentials`` and ``~/.aws/config`` files, or a cloud machine's role. The
endpoint of a non-AWS service comes from ``NCAAS_S3_ENDPOINT`` or the standard
``AWS_ENDPOINT_URL`` (also ``endpoint_url`` in ``~/.aws/config``).

Two behaviours differ from s3fs' defaults, so that every backend honours the same
contract (tests/test_storage_contract.py):

- no listing cache: the manager polls for submit files that other clients write,
  and workers on other machines write status and logs that the manager reads;
- a folder exists exactly while files lie under it, as on AWS S3 itself; some
  services (SeaweedFS) keep empty folder entries after their files are deleted.
"""

from __future__ import annotations

import os
from typing import Any

__all__ = ["ENDPOINT_ENV", "S3_ERRORS", "SETTINGS_ENV", "explain", "is_s3_url", "open_s3", "settings_env"]

ENDPOINT_ENV = "NCAAS_S3_ENDPOINT"
SETTINGS_ENV = (
    ENDPOINT_ENV,
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
)
"""The variables that say where an S3 client connects and who it is: what a manager hands its Ray tasks."""

try:  # s3fs and botocore come with the `scale` extra
    from botocore.exceptions import BotoCoreError
    from fsspec.asyn import sync_wrapper
    from s3fs import S3FileSystem

    S3_ERRORS: tuple[type[BaseException], ...] = (BotoCoreError,)
except ImportError:  # pragma: no cover - exercised only without the extra
    S3FileSystem = None
    S3_ERRORS = ()


def is_s3_url(url: str) -> bool:
    return url.startswith(("s3://", "s3a://"))


def settings_env() -> dict[str, str]:
    """This process's S3 settings (:data:`SETTINGS_ENV` that are set), for the tasks it starts on other
    machines; a key given without its secret, or the reverse, is not handed on half."""
    found = {name: os.environ[name] for name in SETTINGS_ENV if os.environ.get(name)}
    endpoint = endpoint_url() or found.get("AWS_ENDPOINT_URL_S3") or found.get("AWS_ENDPOINT_URL")
    if endpoint:  # named where ncaas looks first, so a node's own NCAAS_S3_ENDPOINT cannot win
        found[ENDPOINT_ENV] = endpoint
    if ("AWS_ACCESS_KEY_ID" in found) != ("AWS_SECRET_ACCESS_KEY" in found):
        found = {k: v for k, v in found.items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    if "AWS_ACCESS_KEY_ID" not in found:
        found.pop("AWS_SESSION_TOKEN", None)
    return found


def endpoint_url() -> str | None:
    """The S3 endpoint to use: ``NCAAS_S3_ENDPOINT``, else whatever botocore finds itself."""
    return os.environ.get(ENDPOINT_ENV) or None


if S3FileSystem is not None:

    class GroupS3FileSystem(S3FileSystem):
        """s3fs where a folder exists exactly while some file lies under it."""

        retries = 4  # s3fs' own retries, around botocore's: an unreachable service fails in seconds

        async def _isdir(self, path: str) -> bool:
            bucket, key, _ = self.split_path(path)
            if not key:
                return await super()._isdir(path)
            listing = await self._call_s3("list_objects_v2", Bucket=bucket, Prefix=key.rstrip("/") + "/", MaxKeys=1)
            return bool(listing.get("Contents"))

        async def _exists(self, path: str, **kwargs: Any) -> bool:
            bucket, key, _ = self.split_path(path)
            if not key:
                return await super()._exists(path, **kwargs)
            return await self._isfile(path) or await self._isdir(path)

        # s3fs binds its sync methods to its own coroutines at class creation; rebind them.
        isdir = sync_wrapper(_isdir)
        exists = sync_wrapper(_exists)


def open_s3(url: str) -> tuple[Any, str]:
    """The filesystem and bucket/prefix path of an ``s3://`` root."""
    if S3FileSystem is None:
        raise ImportError(
            "s3:// roots need the s3fs package; install ncaas with its scale extra: pip install 'ncaas[scale]'"
        )
    options: dict[str, Any] = {
        "use_listings_cache": False,
        "config_kwargs": {
            "connect_timeout": 10,
            "read_timeout": 120,
            "retries": {"max_attempts": 2, "mode": "standard"},
        },
    }
    endpoint = endpoint_url()
    if endpoint:
        options["endpoint_url"] = endpoint
    fs = GroupS3FileSystem(**options)
    path = fs._strip_protocol(url).rstrip("/")
    if not path:
        raise ValueError(f"{url!r} names no bucket; write s3://BUCKET or s3://BUCKET/PREFIX")
    return fs, path


def explain(exc: BaseException, where: str) -> str:
    """A message saying what to check, for an error from the S3 client."""
    name = type(exc).__name__
    endpoint = endpoint_url() or os.environ.get("AWS_ENDPOINT_URL") or "the AWS default endpoint"
    if name in ("NoCredentialsError", "PartialCredentialsError"):
        return (
            f"no S3 credentials were found for {where}; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
            "or AWS_PROFILE / ~/.aws/credentials"
        )
    if name in ("EndpointConnectionError", "ConnectTimeoutError", "ConnectionClosedError"):
        return (
            f"cannot reach the S3 service at {endpoint} for {where}; check the endpoint "
            f"({ENDPOINT_ENV} or AWS_ENDPOINT_URL) and that the service is running"
        )
    if isinstance(exc, PermissionError):
        return (
            f"the S3 service at {endpoint} refused access to {where} ({exc}); check the credentials "
            "(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or AWS_PROFILE) and the bucket's permissions"
        )
    return f"S3 operation on {where} failed: {exc}"
