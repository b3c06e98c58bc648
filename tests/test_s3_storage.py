"""S3 roots against a real SeaweedFS server: where credentials and the endpoint come from, and
what a scientist reads when they are wrong (each in a fresh process, as a user would run it).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ncaas.testing.ray_cluster import LocalS3Server

pytestmark = pytest.mark.timeout(120)

_PROBE = """
import sys
from ncaas.exceptions import StorageError
from ncaas.storage import Storage
try:
    s = Storage(sys.argv[1])
    path = s.join("lab", "configs", "probe.json")
    s.write_text(path, "ok")
    print("read:", s.read_text(path))
except StorageError as exc:
    print("error:", exc)
    sys.exit(1)
"""


def _clean_env(tmp_path: Path) -> dict[str, str]:
    """This process's environment without any AWS setting, and no ~/.aws files."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "NCAAS_S3"))}
    env.update(
        AWS_CONFIG_FILE=str(tmp_path / "none"),
        AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"),
        AWS_EC2_METADATA_DISABLED="true",
    )
    return env


def _probe(url: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _PROBE, url], capture_output=True, text=True, env=env, timeout=90, check=False
    )


def test_credentials_and_endpoint_from_environment_variables(
    s3_server: LocalS3Server, s3_root: str, tmp_path: Path
) -> None:
    env = {
        **_clean_env(tmp_path),
        "AWS_ACCESS_KEY_ID": s3_server.access_key,
        "AWS_SECRET_ACCESS_KEY": s3_server.secret_key,
        "NCAAS_S3_ENDPOINT": s3_server.endpoint_url,
    }
    done = _probe(s3_root, env)
    assert done.stdout.strip() == "read: ok", done.stdout + done.stderr


def test_credentials_and_endpoint_from_aws_config_files(s3_server: LocalS3Server, s3_root: str, tmp_path: Path) -> None:
    (tmp_path / "credentials").write_text(
        f"[lab]\naws_access_key_id = {s3_server.access_key}\naws_secret_access_key = {s3_server.secret_key}\n"
    )
    (tmp_path / "config").write_text(f"[profile lab]\nregion = us-east-1\nendpoint_url = {s3_server.endpoint_url}\n")
    env = {
        **_clean_env(tmp_path),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "credentials"),
        "AWS_CONFIG_FILE": str(tmp_path / "config"),
        "AWS_PROFILE": "lab",
    }
    done = _probe(s3_root, env)
    assert done.stdout.strip() == "read: ok", done.stdout + done.stderr


def test_wrong_credentials_are_explained(s3_server: LocalS3Server, s3_root: str, tmp_path: Path) -> None:
    env = {
        **_clean_env(tmp_path),
        "AWS_ACCESS_KEY_ID": s3_server.access_key,
        "AWS_SECRET_ACCESS_KEY": "wrong",
        "AWS_ENDPOINT_URL": s3_server.endpoint_url,
    }
    done = _probe(s3_root, env)
    assert done.returncode == 1
    assert f"the S3 service at {s3_server.endpoint_url} refused access to" in done.stdout
    assert "check the credentials" in done.stdout and "Traceback" not in done.stderr


def test_missing_credentials_are_explained(s3_server: LocalS3Server, s3_root: str, tmp_path: Path) -> None:
    env = {**_clean_env(tmp_path), "NCAAS_S3_ENDPOINT": s3_server.endpoint_url}
    done = _probe(s3_root, env)
    assert done.returncode == 1
    assert "no S3 credentials were found" in done.stdout and "AWS_ACCESS_KEY_ID" in done.stdout


def test_unreachable_service_is_explained(s3_server: LocalS3Server, s3_root: str, tmp_path: Path) -> None:
    with __import__("socket").socket() as sock:  # a port that nothing listens on
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}"
    env = {**_clean_env(tmp_path), "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y", "NCAAS_S3_ENDPOINT": closed}
    done = _probe(s3_root, env)
    assert done.returncode == 1
    assert f"cannot reach the S3 service at {closed}" in done.stdout


def test_a_root_without_bucket_is_refused() -> None:
    from ncaas.exceptions import StorageError
    from ncaas.storage import Storage

    with pytest.raises(StorageError, match="names no bucket; write s3://BUCKET or s3://BUCKET/PREFIX"):
        Storage("s3://")
