"""`ncaas manager --executor ray --ray-address ADDRESS --root s3://bucket/prefix`, for real:
the manager process watches the S3 prefix and runs what a plain S3 client drops there.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml
from ncaas_testutil import REPO, ncaas, wait_for, write_stack
from ray_fixtures import WORKER_IP

from ncaas.storage import Storage

pytestmark = pytest.mark.timeout(240)


def test_manager_watches_an_s3_prefix_and_runs_on_the_cluster(ray_cluster, s3_root: str, tmp_path: Path) -> None:
    storage = Storage(s3_root)
    log = tmp_path / "manager.log"
    env = {"NCAAS_STATE": str(tmp_path / "state")}
    with open(log, "wb") as out:
        manager = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ncaas",
                "manager",
                "--executor",
                "ray",
                "--ray-address",
                ray_cluster.address,
                "--root",
                s3_root,
                "--scan-interval",
                "0.5",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **env, "COLUMNS": "200"},
        )
    try:
        wait_for(lambda: "ncaas manager on" in log.read_text(), timeout=60, what="the manager to start")
        # Everything below is what any S3 client (aws s3 cp, boto3, s3fs) would do.
        storage.put(write_stack(tmp_path / "x.npy", seed=7), storage.resolve("lab", "inputs", "x.npy"))
        storage.write_text(storage.join("lab", "configs", "c.json"), json.dumps({"stats": ["mean"]}))
        storage.write_text(
            storage.join("lab", "submissions", "s3drop.submit.json"),
            json.dumps(
                {
                    "analysis": "framestats",
                    "dataname": "x.npy",
                    "configname": "c.json",
                    "timestamp": "2026-01-01T00:00:00",
                }
            ),
        )
        end = wait_for(
            lambda: storage.glob("lab/results/*/end.json"),
            timeout=150,
            what=f"end.json in S3; manager log:\n{log.read_text()}",
        )
        result = json.loads(storage.read_text(end[0]))
        assert result["state"] == "succeeded" and result["tasks"] == {"x.npy": "succeeded"}, result
        results = end[0].rsplit("/", 1)[0]
        assert storage.read_text(f"{results}/outputs/x.npy/x.stats.csv").startswith("frame,mean")
        assert json.loads(storage.read_text(f"{results}/certificate.json"))["executor"]["name"] == "ray"
        logs = subprocess.run(
            [sys.executable, "-m", "ncaas", "logs", results.rsplit("/", 1)[1], "--root", s3_root],
            capture_output=True,
            text=True,
            env={**os.environ, **env},
            timeout=60,
        )
        assert logs.returncode == 0, logs.stderr
        assert logs.stdout.strip() and logs.stdout.strip() == storage.read_text(f"{results}/logs/x.npy.log").strip()
    finally:
        manager.send_signal(signal.SIGTERM)
        manager.wait(timeout=60)
    text = log.read_text()
    assert manager.returncode == 0, text
    assert "ray executor" in text and "its Ray tasks stopped with it" in text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--executor", "gpu"], "--executor 'gpu' is not known; use one of: local, ray"),
        (["--executor", "ray"], "--executor ray needs the cluster: --ray-address HEAD:PORT"),
        (["--ray-address", "127.0.0.1:1"], "--ray-address, --ray-max-cpus and --ray-s3-settings need --executor ray"),
        (["--root", "s3://somewhere/x"], "the local executor runs tasks on files of this machine"),
    ],
)
def test_manager_options_are_checked_with_a_message(args: list[str], message: str, tmp_path: Path) -> None:
    full = ["manager", *args] if "--root" in args else ["manager", "--root", str(tmp_path), *args]
    done = ncaas(*full, env={"NCAAS_RAY_ADDRESS": ""}, timeout=60)
    assert done.returncode == 1
    assert message in " ".join(done.stderr.split()), done.stderr
    assert "Traceback" not in done.stderr


def test_example_cluster_config_is_valid_and_scales_from_zero() -> None:
    # Ray's own schema for `ray up`, read without importing ray: Ray reads RAY_AUTH_MODE when it is
    # imported, and the cluster fixture must set it first.
    ray_dir = Path(importlib.util.find_spec("ray").submodule_search_locations[0])
    schema = json.loads((ray_dir / "autoscaler" / "ray-schema.json").read_text())
    config = yaml.safe_load((REPO / "docs" / "ray-cluster-aws.yaml").read_text())
    jsonschema.validate(config, schema)
    assert config["head_node_type"] in config["available_node_types"]
    workers = {k: v for k, v in config["available_node_types"].items() if k != config["head_node_type"]}
    assert workers and all(v["min_workers"] == 0 and v["max_workers"] > 0 for v in workers.values())
    assert config["available_node_types"][config["head_node_type"]]["resources"] == {"CPU": 0}
    setup = " ".join(config["setup_commands"])
    assert "ncaas[scale,server]" in setup and "RAY_AUTH_MODE=token" in setup
    assert "~/.ray/auth_token" in config["file_mounts"]
    # ncaas needs Python >= 3.11; the image has 3.10: every node gets uv's 3.11, and Ray runs from it
    assert "uv venv --allow-existing --python 3.11 ~/venv" in setup
    starts = config["head_start_ray_commands"] + config["worker_start_ray_commands"]
    assert all("~/venv/bin/ray" in c for c in starts if "ray " in c)
    done = ncaas("manager", "--help", timeout=60)  # the documented options exist
    assert done.returncode == 0 and "--ray-address" in done.stdout and "--scan-interval" in done.stdout


AWS = REPO / "docs" / "aws"


def test_aws_roles_let_the_head_scale_workers_and_workers_only_reach_the_bucket() -> None:
    config = yaml.safe_load((REPO / "docs" / "ray-cluster-aws.yaml").read_text())
    nodes = config["available_node_types"]
    profiles = {name: node["node_config"]["IamInstanceProfile"]["Name"] for name, node in nodes.items()}
    assert profiles == {"ray.head.default": "ncaas-head", "ray.worker.cpu": "ncaas-worker"}

    def actions(policy: dict) -> set[str]:
        out: set[str] = set()
        for statement in policy["Statement"]:
            assert statement["Effect"] == "Allow"
            acts = statement["Action"]
            out |= {acts} if isinstance(acts, str) else set(acts)
        return out

    head = json.loads((AWS / "head-policy.json").read_text())
    worker = json.loads((AWS / "worker-policy.json").read_text())
    # the autoscaler launches and terminates workers and hands them their role
    assert {"ec2:RunInstances", "ec2:TerminateInstances", "ec2:CreateTags", "ec2:DescribeInstances"} <= actions(head)
    passrole = [st for st in head["Statement"] if st["Action"] == "iam:PassRole"]
    assert passrole and all(st["Resource"].endswith(":role/ncaas-worker") for st in passrole)
    assert {"ssm:GetParameter", "ec2:AttachVolume"} <= actions(head)  # its settings and its state volume
    assert actions(worker) == {
        "s3:ListBucket",
        "s3:GetBucketLocation",
        "s3:GetObject",
        "s3:PutObject",
        "s3:DeleteObject",
        "s3:AbortMultipartUpload",
    }
    trust = json.loads((AWS / "ec2-trust.json").read_text())
    assert trust["Statement"][0]["Principal"] == {"Service": "ec2.amazonaws.com"}


def test_aws_server_runs_as_a_service_whose_options_exist_with_state_outside_the_head() -> None:
    config = yaml.safe_load((REPO / "docs" / "ray-cluster-aws.yaml").read_text())
    head_setup = " ".join(config["head_setup_commands"])
    assert "ncaas-server.service" in head_setup and "systemctl" in head_setup
    assert "/ncaas/server-env" in head_setup  # settings from SSM: never on a worker or in the checkout
    assert not any("server.env" in str(k) for k in config["file_mounts"])
    unit = (AWS / "ncaas-server.service").read_text()
    assert "Restart=on-failure" in unit and "WantedBy=multi-user.target" in unit
    assert "EnvironmentFile=/etc/ncaas/server.env" in unit
    exec_start = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    options = [word.split("=")[0] for word in exec_start.split() if word.startswith("--")]
    assert options and "--executor" in options
    done = ncaas("serve", "--help", timeout=60)
    assert done.returncode == 0
    listed = " ".join(done.stdout.split())
    assert [o for o in options if o not in listed] == []  # every option the unit uses exists
    settings = (AWS / "server.env.example").read_text()
    # the database outside the cluster, the state (keys, blueprint archive) on its own volume
    assert "NCAAS_DB=postgresql" in settings and "NCAAS_STATE=" in settings and "NCAAS_STATE_VOLUME=" in settings
    script = AWS / "attach-state-volume.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    assert "mkfs" in script.read_text() and 'blkid "$device"' in script.read_text()  # never reformats state


def test_a_lost_node_is_one_line_in_the_manager_log(ray_cluster, s3_root: str, tmp_path: Path) -> None:
    """Ray's own account of a node's death (tens of lines) stays out of the manager's log."""
    storage = Storage(s3_root)
    log = tmp_path / "manager.log"
    env = {**os.environ, "NCAAS_STATE": str(tmp_path / "state"), "COLUMNS": "200"}
    args = ["--executor", "ray", "--ray-address", ray_cluster.address, "--root", s3_root, "--scan-interval", "0.5"]
    with open(log, "wb") as out:
        manager = subprocess.Popen(
            [sys.executable, "-m", "ncaas", "manager", *args], stdout=out, stderr=subprocess.STDOUT, env=env
        )
    try:
        wait_for(lambda: "ncaas manager on" in log.read_text(), timeout=60, what="the manager to start")
        for name in ("p.npy", "q.npy"):
            storage.put(write_stack(tmp_path / name, frames=20, seed=3), storage.resolve("lab", "inputs", name))
        storage.write_text(storage.join("lab", "configs", "slow.json"), json.dumps({"sleep_per_frame": 0.3}))
        body = {"analysis": "framestats", "dataname": ["p.npy", "q.npy"], "configname": "slow.json"}
        storage.write_text(storage.join("lab", "submissions", "lost.submit.json"), json.dumps(body))

        def on_worker() -> str | None:
            for path in storage.glob("lab/results/*/status/*.json"):
                status = json.loads(storage.read_text(path))
                if status.get("node") == WORKER_IP and status.get("state") == "running":
                    return str(status["dataset"])
            return None

        lost = wait_for(on_worker, timeout=120, what=f"a task on the worker; manager log:\n{log.read_text()}")
        before = len(log.read_text().splitlines())
        ray_cluster.kill_node(WORKER_IP)
        try:
            end = wait_for(lambda: storage.glob("lab/results/*/end.json"), timeout=150, what="the job's end")
        finally:
            ray_cluster.add_node(WORKER_IP)
        assert json.loads(storage.read_text(end[0]))["state"] == "succeeded"
    finally:
        manager.send_signal(signal.SIGTERM)
        manager.wait(timeout=60)
    after = log.read_text().splitlines()[before:]
    said = [line for line in after if WORKER_IP in line]
    assert len(said) == 1 and lost in said[0] and "retry" in said[0], after
    assert not [line for line in after if "(raylet)" in line or "heartbeats" in line or ".cc:" in line], after
