"""Rerun verdicts: each comparator on real files, the blueprint's rules, and reruns end to end.

Comparators recover known answers (a known shape change, a known number of changed pixels,
a known key); the end-to-end tests run real jobs and the real `ncaas` command.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml
from ncaas_testutil import ncaas, submit
from PIL import Image

from ncaas.blueprint import BlueprintRegistry, CompareRule, rule_for, validate_blueprint_file
from ncaas.jobs.db import JobDB, default_db_url
from ncaas.jobs.manager import Manager
from ncaas.provenance.compare import Rule, compare_files
from ncaas.provenance.verdicts import compare_certificates, compare_in_sandbox, summary_line, verdicts_ok
from ncaas.storage import Storage

pytestmark = pytest.mark.timeout(180)


def _pair(tmp_path: Path, name: str) -> tuple[Path, Path]:
    (tmp_path / "a").mkdir(exist_ok=True)
    (tmp_path / "b").mkdir(exist_ok=True)
    return tmp_path / "a" / name, tmp_path / "b" / name


# -- numeric -----------------------------------------------------------------------------------
def test_arrays_equal_within_tolerance_say_the_largest_difference(tmp_path):
    a, b = _pair(tmp_path, "x.npy")
    values = np.random.default_rng(0).random((30, 40))
    np.save(a, values)
    np.save(b, values + 1e-9)
    outcome = compare_files(a, b, Rule("numeric", rtol=1e-6, atol=1e-8))
    assert outcome.equal and outcome.detail.startswith("largest difference 1e-09"), outcome
    assert "within rtol 1e-06, atol 1e-08" in outcome.detail


def test_the_same_values_stored_differently_are_equal(tmp_path):
    a, b = _pair(tmp_path, "x.npy")
    values = np.arange(12.0).reshape(3, 4)
    np.save(a, values)
    np.save(b, np.asfortranarray(values))  # other bytes, same array
    assert compare_files(a, b, Rule("numeric")).equal


def test_arrays_of_another_shape_or_values_beyond_tolerance_are_named(tmp_path):
    a, b = _pair(tmp_path, "traces.npy")
    np.save(a, np.zeros((185, 24, 24), np.float32))
    np.save(b, np.zeros((180, 24, 24), np.float32))
    outcome = compare_files(a, b, Rule("numeric", rtol=1e-6))
    assert not outcome.equal and outcome.detail == "shape (185, 24, 24) vs (180, 24, 24)"
    np.save(b, np.zeros((185, 24, 24), np.float64))
    assert compare_files(a, b, Rule("numeric")).detail == "dtype float32 vs float64"
    changed = np.zeros((185, 24, 24), np.float32)
    changed[12, 3, 4] = 0.5
    np.save(b, changed)
    outcome = compare_files(a, b, Rule("numeric", rtol=1e-6, atol=1e-9))
    assert not outcome.equal
    assert outcome.detail.startswith("1 of 106,560 values differ beyond rtol 1e-06, atol 1e-09; largest 0.5")
    assert outcome.detail.endswith("at [12, 3, 4]: 0 vs 0.5"), outcome


def test_npz_members_are_compared_one_by_one(tmp_path):
    a, b = _pair(tmp_path, "A.npz")
    np.savez(a, data=np.ones(5), indptr=np.arange(3))
    np.savez(b, data=np.ones(5), indptr=np.arange(4))
    assert compare_files(a, b, Rule("numeric")).detail == "indptr: shape (3,) vs (4,)"
    np.savez(b, data=np.ones(5))
    assert compare_files(a, b, Rule("numeric")).detail == "arrays only in the original: indptr"


# -- json ----------------------------------------------------------------------------------------
def test_json_ignores_declared_keys_and_names_the_first_differences(tmp_path):
    a, b = _pair(tmp_path, "summary.json")
    a.write_text(json.dumps({"neurons": 185, "sessions": ["d1", "d2"], "run": {"seconds": 81.2, "host": "x"}}))
    b.write_text(json.dumps({"sessions": ["d1", "d2"], "neurons": 185.0, "run": {"seconds": 79.0, "host": "y"}}))
    outcome = compare_files(a, b, Rule("json", ignore=("run",)))
    assert outcome.equal and outcome.detail == "same values apart from run (ignored)"
    assert not compare_files(a, b, Rule("json")).equal  # run is compared unless ignored
    b.write_text(json.dumps({"neurons": 180, "sessions": ["d1"], "run": {}, "extra": True}))
    outcome = compare_files(a, b, Rule("json", ignore=("run",)))
    assert not outcome.equal
    assert outcome.detail == "extra only in the rerun; neurons: 185 vs 180; sessions: 2 vs 1 items", outcome
    b.write_text(json.dumps({"neurons": 185, "sessions": ["d1", "d2"], "run": {"seconds": 1, "host": "x"}}))
    assert compare_files(a, b, Rule("json", ignore=("run.seconds",))).equal  # a dotted path


# -- images --------------------------------------------------------------------------------------
def test_images_compare_decoded_pixels(tmp_path):
    a, b = _pair(tmp_path, "qc.png")
    pixels = np.zeros((240, 240), np.uint8)
    Image.fromarray(pixels).save(a)
    Image.fromarray(pixels).save(b, pnginfo=_text("Software", "another version"))  # same pixels, other bytes
    assert a.read_bytes() != b.read_bytes()
    outcome = compare_files(a, b, Rule("image"))
    assert outcome.equal and outcome.detail.startswith("same pixels"), outcome
    changed = pixels.copy()
    changed[:8, :10] = 41
    Image.fromarray(changed).save(b)
    outcome = compare_files(a, b, Rule("image"))
    assert not outcome.equal and outcome.detail == "80 of 57,600 pixels differ, largest 41"
    Image.fromarray(np.zeros((240, 200), np.uint8)).save(b)
    assert compare_files(a, b, Rule("image")).detail == "size 240x240 vs 200x240 pixels"


def _text(key: str, value: str):
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text(key, value)
    return info


# -- nwb / hdf5 ----------------------------------------------------------------------------------
def _nwb_like(path: Path, *, neurons: int, created: str, object_id: str, unit: str = "noise std") -> None:
    with h5py.File(path, "w") as f:
        f["file_create_date"] = created
        f["identifier"] = "caliali-abc"
        f.attrs["object_id"] = object_id
        series = f.create_group("processing/ophys/Fluorescence/C")
        series.attrs["object_id"] = object_id + "-C"
        data = series.create_dataset("data", data=np.ones((neurons, 50), np.float32))
        data.attrs["unit"] = unit
        f["alias"] = h5py.SoftLink("/processing/ophys/Fluorescence/C")


def test_nwb_ignores_volatile_fields_and_names_what_differs(tmp_path):
    a, b = _pair(tmp_path, "neurons.nwb")
    _nwb_like(a, neurons=185, created="2026-01-01T10:00", object_id="1111")
    _nwb_like(b, neurons=185, created="2026-01-02T11:30", object_id="2222")
    volatile = ("/file_create_date", "@object_id")
    outcome = compare_files(a, b, Rule("nwb", ignore=volatile))
    assert outcome.equal and outcome.detail.startswith("same values"), outcome
    outcome = compare_files(a, b, Rule("nwb"))
    assert not outcome.equal
    assert outcome.detail.startswith("/@object_id: '1111' vs '2222'; /file_create_date: "), outcome
    _nwb_like(b, neurons=180, created="2026-01-02T11:30", object_id="2222", unit="dF/F")
    outcome = compare_files(a, b, Rule("nwb", ignore=volatile))
    assert outcome.detail == (
        "/processing/ophys/Fluorescence/C/data: shape (185, 50) vs (180, 50); "
        "/processing/ophys/Fluorescence/C/data@unit: 'noise std' vs 'dF/F'"
    ), outcome
    # numeric on an HDF5 file: its datasets, not its attributes
    assert compare_files(a, b, Rule("numeric")).detail.startswith("/file_create_date: ")


# -- in the sandbox ------------------------------------------------------------------------------
def test_the_sandboxed_comparison_gives_the_same_verdict(tmp_path):
    a, b = _pair(tmp_path, "summary.json")
    a.write_text(json.dumps({"neurons": 185}))
    b.write_text(json.dumps({"neurons": 180}))
    assert compare_in_sandbox(a, b, CompareRule(pattern="*", kind="json")) == ("different", "neurons: 185 vs 180")


# -- blueprint rules -----------------------------------------------------------------------------
def test_the_first_matching_rule_applies_and_exact_is_the_default():
    rules = [
        CompareRule(pattern="summary.json", kind="json", ignore=["run"]),
        CompareRule(pattern="*.json", kind="json"),
        CompareRule(pattern="qc/*.png", kind="image"),
    ]
    assert rule_for(rules, "summary.json").ignore == ["run"]
    assert rule_for(rules, "alignment/alignment.json").ignore == []
    assert rule_for(rules, "qc/a.png").kind == "image"
    assert rule_for(rules, "other.png").kind == "exact"


def test_blueprint_validate_names_every_bad_comparator(tmp_path):
    path = tmp_path / "blueprint.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "x",
                "version": "1",
                "command": ["run", "{input}", "{output}"],
                "compare": [
                    {"pattern": "*.npy", "kind": "numeric", "rtol": 1e-6},
                    {"pattern": "/abs/*.npy", "kind": "numeric"},
                    {"pattern": "*.png", "kind": "image", "atol": 1},
                    {"pattern": "*.json", "kind": "jsn"},
                    {"pattern": "*.h5", "kind": "nwb", "rtol": -1},
                    {"pattern": "*.txt", "kind": "exact", "ignore": ["x"]},
                ],
            }
        )
    )
    done = ncaas("blueprint", "validate", str(path))
    assert done.returncode != 0 and "Traceback" not in done.stderr
    text = " ".join(done.stderr.split())
    assert "compare.3.kind (line " in text, text  # each problem says where it is
    text = re.sub(r" \(line \d+\)", "", text)
    for expected in (
        "compare.1.pattern: pattern '/abs/*.npy' must be relative to the dataset's outputs",
        "compare.2: rtol/atol apply to kinds numeric and nwb, not 'image'",
        "compare.3.kind: unknown kind 'jsn'; allowed: exact, numeric, nwb, image, json",
        "compare.4.rtol: -1.0 is not a tolerance",
        "compare.5: ignore applies to kinds nwb and json, not 'exact'",
    ):
        assert expected in text, text
    twice = {"pattern": "*.npy", "kind": "numeric"}
    path.write_text(yaml.safe_dump({**yaml.safe_load(path.read_text()), "compare": [twice, twice]}))
    _, problems = validate_blueprint_file(path)
    assert [re.sub(r" \(line \d+\)", "", p) for p in problems] == [
        "blueprint.yaml: compare: pattern '*.npy' is declared twice; the first rule wins, so remove the second"
    ]


def test_a_blueprint_without_comparators_keeps_its_hash(tmp_path):
    path = tmp_path / "blueprint.yaml"
    data = {"name": "x", "version": "1", "command": ["run", "{input}", "{output}"]}
    path.write_text(yaml.safe_dump(data))
    model, _ = validate_blueprint_file(path)
    assert model is not None and "compare" not in json.loads(model.canonical())


# -- end to end ----------------------------------------------------------------------------------
# A small analysis on the platform's own python whose outputs depend on the config's `neurons`:
# traces (n, 50), a summary with a `run` section of timings, an NWB-like file with a creation
# time and object ids, and a QC image with n rows drawn.
COUNTS = "\n".join(
    [
        "import json, sys, time",
        "import h5py, numpy as np",
        "from PIL import Image",
        "inp, cfg, out = sys.argv[1:4]",
        "n = json.load(open(cfg)).get('neurons', 185)",
        "np.save(out + '/traces.npy', np.random.default_rng(0).random((n, 50)).astype(np.float32))",
        "json.dump(dict(neurons=n, run=dict(started=time.time())), open(out + '/summary.json', 'w'))",
        "img = np.zeros((240, 240), np.uint8)",
        "img[:n, :10] = 41",
        "Image.fromarray(img).save(out + '/qc.png')",
        "f = h5py.File(out + '/neurons.nwb', 'w')",
        "f['file_create_date'] = str(time.time_ns())",
        "f.attrs['object_id'] = str(time.time_ns())",
        "f['C'] = np.ones((n, 50), np.float32)",
        "f.close()",
    ]
)


def counts_blueprint(folder: Path) -> Path:
    path = folder / "counts" / "blueprint.yaml"
    path.parent.mkdir(parents=True)
    blueprint = {
        "name": "counts",
        "version": "1",
        "command": ["{python}", "-c", COUNTS, "{input}", "{config}", "{output}"],
        "resources": {"memory": "1GiB", "timeout": "2m"},
        "config_schema": {"type": "object", "properties": {"neurons": {"type": "integer", "minimum": 1}}},
        "default_config": {"neurons": 185},
        "compare": [
            {"pattern": "summary.json", "kind": "json", "ignore": ["run"]},
            {"pattern": "*.nwb", "kind": "nwb", "ignore": ["/file_create_date", "@object_id"]},
            {"pattern": "*.npy", "kind": "numeric", "rtol": 1e-6, "atol": 1e-9},
            {"pattern": "*.png", "kind": "image"},
        ],
    }
    path.write_text(yaml.safe_dump(blueprint))
    return folder


def _cells(printed: str) -> str:
    """A printed table's cells in order, separated by single spaces (rules and borders left out)."""
    return " ".join(re.sub(r"[\u2500-\u257f]", " ", printed).split())


def _job(manager, name: str, analysis: str, config: dict | None = None):
    root = Path(manager.storage.root)
    job = manager.ingest_file(
        "lab", str(submit(root, name, {"analysis": analysis, "dataname": "a.npy"}, config=config))
    )
    job = manager.run_job(job.id)
    assert job.state == "succeeded", job.cause
    return job


def test_a_rerun_of_framestats_is_identical_file_by_file(manager, root):
    job = _job(manager, "fs", "framestats")
    done = ncaas("rerun", job.id, "--root", str(root))
    assert done.returncode == 0, done.stdout + done.stderr
    text = _cells(done.stdout)
    assert "a.npy/summary.json identical json" in text and "a.npy/a.stats.csv identical exact" in text, text
    assert "2 identical, 0 equal within tolerance, 0 different" in text
    # the verdict is kept in the platform's state folder, never in group storage
    assert list((root / ".ncaas" / "verdicts").glob("v1-*.json"))
    assert not [p for p in (root / "lab").rglob("*") if "verdict" in p.name]


@pytest.fixture
def counts(root, tmp_path):
    """A manager over ``root`` that knows the counts analysis, and the env that shows it to `ncaas`."""
    folder = counts_blueprint(tmp_path / "bps")
    storage = Storage(root)
    db = JobDB(default_db_url(storage.root))
    yield Manager(storage, db, registry=BlueprintRegistry.discover([folder])), {"NCAAS_BLUEPRINTS": str(folder)}
    db.close()


def test_a_changed_config_is_reported_with_the_differing_numbers(counts, root):
    manager, env = counts
    first = _job(manager, "n185", "counts", {"neurons": 185})
    again = _job(manager, "n185-again", "counts", {"neurons": 185})
    fewer = _job(manager, "n180", "counts", {"neurons": 180})

    done = ncaas("compare", first.id, again.id, "--root", str(root), env=env)
    text = _cells(done.stdout)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "a.npy/traces.npy identical" in text and "a.npy/qc.png identical" in text, text
    # the same values once the rule's ignored fields are left out: identical, and the detail says why
    assert re.search(r"a\.npy/summary\.json identical json same values apart from run", text), text
    assert re.search(r"a\.npy/neurons\.nwb identical nwb same values", text), text
    assert "4 identical, 0 equal within tolerance, 0 different" in text

    done = ncaas("compare", first.id, fewer.id, "--root", str(root), env=env)
    text = _cells(done.stdout)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "neurons: 185 vs 180" in text, text
    assert "a.npy/traces.npy different numeric shape (185, 50) vs (180, 50)" in text, text
    assert "a.npy/neurons.nwb different nwb /C: shape (185, 50) vs (180, 50)" in text, text
    assert "a.npy/qc.png different image 50 of 57,600 pixels differ, largest 41" in text, text
    assert "0 identical, 0 equal within tolerance, 4 different" in text


def test_summary_and_exit_status_words():
    rows = [{"verdict": v} for v in ("identical",) * 19 + ("within_tolerance",)]
    assert summary_line(rows) == "19 identical, 1 equal within tolerance, 0 different" and verdicts_ok(rows)
    rows += [{"verdict": "missing"}, {"verdict": "not_compared"}]
    assert (
        summary_line(rows) == "19 identical, 1 equal within tolerance, 0 different, 1 missing, 1 could not be compared"
    )
    assert not verdicts_ok(rows)


# -- storage: local or S3 ------------------------------------------------------------------------
def _certificate(storage: Storage, job_id: str, files: dict[str, bytes], rules: list[dict]) -> dict:
    """The parts of a certificate a comparison reads; the files are stored where the job's outputs live."""
    outputs = []
    for path, data in files.items():
        storage.write_bytes(f"{storage.results_dir('lab', job_id)}/outputs/d/{path}", data)
        outputs.append({"path": path, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()})
    return {
        "job": {"id": job_id, "group": "lab"},
        "blueprint": {"content": {"compare": rules}},
        "tasks": [{"dataset": "d", "outputs": outputs}],
    }


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_only_files_whose_hashes_differ_are_fetched_from_local_or_s3_storage(backend, request, tmp_path, monkeypatch):
    monkeypatch.setenv("NCAAS_STATE", str(tmp_path / "state"))  # the state folder of an S3 root
    storage = Storage(tmp_path / "root" if backend == "local" else request.getfixturevalue("s3_root"))
    rules = [{"pattern": "*.json", "kind": "json"}]
    same = b'{"n": 1}'
    before = _certificate(storage, "job-a", {"same.json": same, "summary.json": b'{"neurons": 185}'}, rules)
    after = _certificate(storage, "job-b", {"same.json": same, "summary.json": b'{"neurons": 180}'}, rules)
    storage.remove(f"{storage.results_dir('lab', 'job-a')}/outputs/d/same.json")  # never read: identical
    rows = compare_certificates(storage, before, after)
    assert [(r["path"], r["verdict"], r["detail"]) for r in rows] == [
        ("d/same.json", "identical", ""),
        ("d/summary.json", "different", "neurons: 185 vs 180"),
    ]
    assert list((storage.state_dir() / "verdicts").glob("v1-*.json"))
    assert not list((storage.state_dir() / "tmp").iterdir())  # the fetched copies are gone
