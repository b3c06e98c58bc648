"""Outputs are written by user code: comparing them must not trust them.

The attacks: an output `.npy` holding a pickle that runs a command when loaded, a PNG that
decodes to gigapixels, a file that is not what its name says, an output changed in group
storage after its certificate was written (so that a verdict would vouch for bytes the
certificate never saw), and a forged certificate posted to be compared against. Each gets a
verdict in words ("could not compare: ...") or a refusal; nothing is unpickled, nothing is
decoded past its limit, and the comparisons run in the platform's sandbox. Genuine reruns
and jobs with a changed config are judged by the analysis' comparators, through the API and
`ncaas compare` against the server.
"""

from __future__ import annotations

import io
import json
import os
import re
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml
from ncaas_testutil import ncaas
from PIL import Image

from ncaas.blueprint import CompareRule
from ncaas.provenance.compare import Rule, compare_files
from ncaas.provenance.verdicts import compare_in_sandbox, summary_line

from .conftest import SERVER_BLUEPRINTS, finished, start_site

pytestmark = pytest.mark.timeout(300)

# Copies the dataset's subfolder named by the config's `source` into the outputs, as it is.
COPIES = "\n".join(
    [
        "import json, shutil, sys",
        "inp, cfg, out = sys.argv[1:4]",
        "shutil.copytree(inp + '/' + json.load(open(cfg)).get('source', 'good'), out, dirs_exist_ok=True)",
    ]
)
RULES = [
    {"pattern": "summary.json", "kind": "json", "ignore": ["run"]},
    {"pattern": "*.npy", "kind": "numeric", "rtol": 1e-6, "atol": 1e-9},
    {"pattern": "*.png", "kind": "image"},
]


class Payload:
    """Unpickled, it runs a command: what `np.load(..., allow_pickle=True)` would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _pickled_npy(marker: Path) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.array([Payload(marker)], dtype=object), allow_pickle=True)
    return buf.getvalue()


def _bomb_png() -> bytes:
    buf = io.BytesIO()
    Image.new("1", (12_000, 12_000)).save(buf, format="PNG")  # 144 megapixels in a few kB
    return buf.getvalue()


def _outputs(folder: Path, *, neurons: int, seconds: float) -> None:
    folder.mkdir(parents=True)
    np.save(folder / "traces.npy", np.random.default_rng(0).random((neurons, 50)).astype(np.float32))
    (folder / "summary.json").write_text(json.dumps({"neurons": neurons, "run": {"seconds": seconds}}))
    pixels = np.zeros((64, 64), np.uint8)
    pixels[: neurons - 128] = 200  # 185: rows 0-56; 180: rows 0-51
    Image.fromarray(pixels).save(folder / "qc.png")


@pytest.fixture(scope="module")
def verdict_site(tmp_path_factory):
    base = tmp_path_factory.mktemp("verdicts")
    folder = base / "blueprints" / "copies"
    folder.mkdir(parents=True)
    folder.joinpath("blueprint.yaml").write_text(
        yaml.safe_dump(
            {
                "name": "copies",
                "version": "1",
                "command": ["{python}", "-c", COPIES, "{input}", "{config}", "{output}"],
                "resources": {"memory": "1GiB", "timeout": "2m"},
                "config_schema": {"type": "object", "properties": {"source": {"type": "string"}}},
                "compare": RULES,
            }
        )
    )
    env = {"NCAAS_BLUEPRINTS": os.pathsep.join([str(folder.parent), str(SERVER_BLUEPRINTS)])}
    site = start_site(base, env=env)
    dataset = base / "d"
    _outputs(dataset / "good", neurons=185, seconds=81.0)
    _outputs(dataset / "fewer", neurons=180, seconds=79.5)
    (dataset / "evil").mkdir()
    (dataset / "evil" / "traces.npy").write_bytes(_pickled_npy(base / "unpickled"))
    (dataset / "evil" / "qc.png").write_bytes(_bomb_png())
    (dataset / "evil" / "summary.json").write_bytes(os.urandom(2000))
    client = site.clients["lab"]
    client.upload_dataset(dataset)
    jobs = {}
    for source in ("good", "fewer", "evil"):
        client.save_config(f"{source}.json", {"source": source})
        jobs[source] = finished(client, client.submit("copies", ["d"], configname=f"{source}.json"))
        assert jobs[source]["state"] == "succeeded", jobs[source]
    jobs["rerun"] = finished(client, client.rerun(jobs["good"]["id"]))
    yield site, jobs
    site.close()
    assert site.server.stop() is not None
    assert "Traceback" not in site.server.log(), site.server.log()


def _by_path(rows: list[dict]) -> dict[str, dict]:
    return {r["path"]: r for r in rows}


def test_a_rerun_shows_its_verdict_identical_file_by_file(verdict_site):
    site, jobs = verdict_site
    verdict = site.clients["lab"].verdict(jobs["rerun"]["id"])
    assert verdict["original"] == jobs["good"]["id"] and verdict["ok"], verdict
    assert verdict["summary"] == "3 identical, 0 equal within tolerance, 0 different"
    assert {r["verdict"] for r in verdict["rows"]} == {"identical"}
    assert site.clients["lab"].job(jobs["rerun"]["id"])["rerun_of"] == jobs["good"]["id"]
    with site.http("lab") as http:  # a job that is no rerun has no verdict of its own
        resp = http.get(f"/api/jobs/{jobs['good']['id']}/verdict")
        assert resp.status_code == 404 and "is not a rerun" in resp.json()["error"]


def test_a_changed_config_is_reported_with_the_differing_numbers(verdict_site):
    site, jobs = verdict_site
    rows = _by_path(site.clients["lab"].compare_jobs(jobs["good"]["id"], jobs["fewer"]["id"]))
    assert rows["d/summary.json"]["verdict"] == "different"
    assert rows["d/summary.json"]["detail"] == "neurons: 185 vs 180"  # run (timings) ignored as declared
    assert rows["d/traces.npy"]["detail"] == "shape (185, 50) vs (180, 50)"
    assert rows["d/qc.png"]["detail"] == "320 of 4,096 pixels differ, largest 200"
    url, token = site.server.url, site.tokens["lab"]
    done = ncaas("--server", url, "--token", token, "compare", jobs["good"]["id"], jobs["fewer"]["id"])
    text = " ".join(re.sub(r"[\u2500-\u257f]", " ", done.stdout).split())
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stdout + done.stderr
    assert "d/summary.json different json neurons: 185 vs 180" in text, text
    assert "0 identical, 0 equal within tolerance, 3 different" in text, text
    with site.http("other") as http:  # another group's jobs cannot be compared, or even named
        assert http.get(f"/api/jobs/{jobs['fewer']['id']}/compare/{jobs['good']['id']}").status_code == 404


def test_hostile_outputs_are_not_compared_and_say_why(verdict_site):
    site, jobs = verdict_site
    rows = _by_path(site.clients["lab"].compare_jobs(jobs["good"]["id"], jobs["evil"]["id"]))
    assert {r["verdict"] for r in rows.values()} == {"not_compared"}, rows
    assert "pickled objects are never loaded" in rows["d/traces.npy"]["detail"]
    assert "DecompressionBombError" in rows["d/qc.png"]["detail"]
    assert "not JSON" in rows["d/summary.json"]["detail"]
    assert not (site.base / "unpickled").exists()
    assert summary_line(list(rows.values())).endswith("0 different, 3 could not be compared")


def test_hostile_files_are_refused_in_process_too(tmp_path):
    good, evil = tmp_path / "good.npy", tmp_path / "evil.npy"
    np.save(good, np.zeros(1))
    evil.write_bytes(_pickled_npy(tmp_path / "unpickled"))
    with pytest.raises(ValueError, match="pickled objects are never loaded"):
        compare_files(good, evil, Rule("numeric"))
    assert not (tmp_path / "unpickled").exists()
    png, bomb = tmp_path / "a.png", tmp_path / "bomb.png"
    Image.new("L", (8, 8)).save(png)
    bomb.write_bytes(_bomb_png())
    with pytest.raises(Image.DecompressionBombError):
        compare_files(png, bomb, Rule("image"))


def test_a_comparison_past_its_timeout_is_stopped_and_says_so(tmp_path):
    # two million numbers: seconds of work for the comparator, so it is still running at 0.5 s
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text("[" + ",".join(["1"] * 2_000_000) + "]")
    b.write_text("[" + ",".join(["1"] * 1_999_999) + ",2]")
    rule = CompareRule(pattern="*", kind="json")
    assert compare_in_sandbox(a, b, rule, timeout=0.5) == (
        "not_compared",
        "the comparison took longer than its 0.5 s",
    )


def test_hdf5_data_kept_in_other_files_is_not_read(tmp_path):
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"s3cret!!" * 4)
    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    with h5py.File(a, "w") as f:
        f.create_dataset("x", data=np.zeros(32, np.uint8))
    with h5py.File(b, "w") as f:  # the rerun's file points its dataset at a file of the host
        f.create_dataset("x", shape=(32,), dtype=np.uint8, external=[(str(secret), 0, 32)])
    with pytest.raises(ValueError, match="/x keeps its data in other files"):
        compare_files(a, b, Rule("nwb"))


def test_an_output_changed_in_storage_after_its_certificate_is_not_compared(verdict_site):
    site, jobs = verdict_site
    stored = site.root / "lab" / "results" / jobs["fewer"]["id"] / "outputs" / "d" / "traces.npy"
    np.save(stored, np.zeros((185, 50), np.float32))  # the group can write its results
    rows = _by_path(site.clients["lab"].compare_jobs(jobs["rerun"]["id"], jobs["fewer"]["id"]))
    assert rows["d/traces.npy"]["verdict"] == "not_compared"
    assert rows["d/traces.npy"]["detail"] == (
        f"the stored traces.npy of job {jobs['fewer']['id']} changed since its certificate was written"
    )
    assert rows["d/summary.json"]["detail"] == "neurons: 185 vs 180"
    # verdicts are kept in the platform's state folder, where the group cannot write
    assert list((site.root / ".ncaas" / "verdicts").glob("v1-*.json"))
    assert not [p for p in (site.root / "lab").rglob("*") if "verdict" in p.name]


def test_a_forged_certificate_is_not_compared_against(verdict_site):
    site, jobs = verdict_site
    lab = site.clients["lab"]
    cert = lab.certificate(jobs["good"]["id"])
    assert isinstance(cert, dict)
    assert {r["verdict"] for r in lab.compare(jobs["rerun"]["id"], cert)} == {"identical"}
    forged = json.loads(json.dumps(cert))
    forged["tasks"][0]["outputs"] = forged["tasks"][0]["outputs"][:1]  # claims fewer outputs than it had
    with site.http("lab") as http:
        resp = http.post(f"/api/jobs/{jobs['rerun']['id']}/compare", json=forged)
    assert resp.status_code == 403 and "changed after this platform signed it" in resp.json()["error"]
