"""The review step's parts (docs/review.md): decisions folded into their final state, the neurons
layout read through storage (local and S3; a trace by byte range), the blueprint's review block,
the decisions table on SQLite and PostgreSQL, and the review API on a real server."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest
from ncaas_testutil import ncaas
from pydantic import ValidationError
from sqlalchemy.exc import IntegrityError

from ncaas.blueprint import Blueprint
from ncaas.client import Client
from ncaas.jobs.db import JobDB, ReviewAction
from ncaas.review.decisions import DecisionRefused, Entry, check, decisions_document, fold
from ncaas.review.layout import Layout, LayoutError, decimate
from ncaas.review.neurons import contours, neighbours, table
from ncaas.server.accounts import Accounts
from ncaas.storage import Storage
from ncaas.testing.neurons import write_layout
from ncaas.testing.servers import ServerProcess, storage_with_user

REVIEW_BLUEPRINTS = Path(__file__).parent / "review_blueprints"


def _e(seq: int, action: str, *neurons: int, undoes: int | None = None, user: str = "ann") -> Entry:
    return Entry(seq, action, tuple(neurons), user, f"2026-01-01T00:00:{seq:02d}.000000Z", undoes)


# -- decisions ---------------------------------------------------------------------------------
def test_decisions_fold_into_a_consistent_final_state():
    log = [
        _e(1, "reject", 3),
        _e(2, "merge", 4, 5),
        _e(3, "merge", 5, 7),
        _e(4, "accept", 0, 1),
        _e(5, "undo", undoes=4),
    ]
    state = fold(10, log)
    assert state.final() == {"accepted": [], "rejected": [3], "merges": [[4, 5, 7]]}  # merging into a merge joins it
    assert state.status() == {3: "rejected", 4: "merged", 5: "merged", 7: "merged"}
    assert state.in_effect == [1, 2, 3]
    for entry, why in (
        (_e(6, "merge", 3, 8), "neuron 3 is rejected; undo its rejection before merging it"),
        (_e(6, "reject", 7), "neuron 7 is part of a merge; undo the merge before rejecting it"),
        (_e(6, "accept", 10), "no neuron 10: this result has neurons 0 to 9"),
        (_e(6, "merge", 2), "a merge needs two or more different neurons"),
        (_e(6, "undo", undoes=2), "the latest decision is now #3"),  # only the latest may be undone
    ):
        with pytest.raises(DecisionRefused, match=why):
            check(10, log, entry)
    check(10, log, _e(6, "undo", undoes=3))
    # accepting a rejected neuron takes its rejection back; undo restores it
    again = [*log, _e(6, "accept", 3)]
    assert fold(10, again).final()["rejected"] == [] and fold(10, [*again, _e(7, "undo", undoes=6)]).rejected == {3}


def test_the_decisions_file_is_sorted_json_in_the_contract_format():
    log = [_e(1, "reject", 3), _e(2, "merge", 9, 7), _e(3, "undo", undoes=1)]
    text = decisions_document(job="J", dataset="exp", certificate_sha256="c" * 64, n_neurons=12, log=log)
    doc = json.loads(text)
    assert text.decode() == json.dumps(doc, indent=1, sort_keys=True) + "\n"
    assert doc["format"] == "ncaas-review/1" and doc["n_neurons"] == 12
    assert doc["final"] == {"accepted": [], "rejected": [], "merges": [[7, 9]]}
    assert doc["log"][2] == {
        "seq": 3,
        "action": "undo",
        "undoes": 1,
        "user": "ann",
        "at": "2026-01-01T00:00:03.000000Z",
    }


# -- the layout, through storage ------------------------------------------------------------------
@pytest.fixture(scope="module")
def layout_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("layout") / "arrays"
    write_layout(folder, neurons=15, frames=3000, height=48, width=64, sessions=3, radius=3, seed=1)
    return folder


def _check_layout(layout: Layout, folder: Path) -> None:
    raw = np.load(folder / "C_raw.npy")
    for k in (0, 7, 14):
        assert np.array_equal(layout.trace("C_raw", k), raw[k])  # one row, by byte range
    spikes = np.load(folder / "S.npy")
    bounds = layout.session_bounds()
    assert bounds == [0, 1000, 2000, 3000]
    expected = [[float(spikes[k, a:b].mean()) for a, b in zip(bounds, bounds[1:], strict=False)] for k in range(15)]
    assert np.allclose(layout.activity(), expected, rtol=1e-3, atol=1e-6)
    rows = table(layout)
    assert [r["id"] for r in rows] == list(range(15)) and all(r["size"] > 5 for r in rows)
    outlines = contours(layout)
    assert len(outlines) == 15 and all(outlines)
    y, x = rows[4]["center"]
    xs = [p[0] for p in outlines[4][0]]
    ys = [p[1] for p in outlines[4][0]]
    assert min(xs) < x < max(xs) and min(ys) < y < max(ys)  # the outline surrounds the centre
    near = neighbours(layout, 4)
    assert near[0]["distance"] <= near[-1]["distance"] and 4 not in [n["id"] for n in near]
    assert layout.image("Cn", None).shape == (48, 64)


def test_a_layout_is_read_a_row_at_a_time_from_local_storage(layout_dir: Path, tmp_path: Path):
    storage = Storage(str(tmp_path))
    folder = tmp_path / "lab" / "results" / "j" / "outputs" / "d" / "arrays"
    shutil.copytree(layout_dir, folder)
    _check_layout(Layout.open(storage, str(folder)), folder)


def test_a_layout_is_read_the_same_from_s3(layout_dir: Path, s3_root: str):
    storage = Storage(s3_root)
    folder = f"{s3_root}/lab/results/j/outputs/d/arrays"
    for path in layout_dir.iterdir():
        storage.put(path, f"{folder}/{path.name}")
    _check_layout(Layout.open(storage, folder), layout_dir)


def test_a_layout_without_images_or_with_wrong_arrays_is_explained(layout_dir: Path, tmp_path: Path):
    folder = tmp_path / "arrays"
    shutil.copytree(layout_dir, folder)
    meta = json.loads((folder / "meta.json").read_text())
    del meta["images"]
    (folder / "meta.json").write_text(json.dumps(meta))
    for name in ("mean.npy", "max.npy"):
        (folder / name).unlink()
    layout = Layout.open(Storage(str(tmp_path)), str(folder))
    assert [(i.kind, i.session) for i in layout.images()] == [("Cn", None), ("PNR", None)]
    meta["n_neurons"] = 16
    (folder / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(LayoutError, match="A.npz is 3072 × 15; meta.json says 3072 pixels × 16"):
        Layout.open(Storage(str(tmp_path)), str(folder)).footprints()
    with pytest.raises(LayoutError, match="is missing"):
        Layout.open(Storage(str(tmp_path)), str(tmp_path / "nothing"))


def test_decimation_keeps_a_one_frame_spike():
    trace = np.zeros(100_000, np.float32)
    trace[54_321] = 7.0
    shown = decimate(trace, 1000)
    assert len(shown["max"]) <= 1000 and max(shown["max"]) == 7.0 and min(shown["min"]) == 0.0
    assert decimate(trace[:50], 1000)["frames"] == list(range(50))


# -- the blueprint's review block -----------------------------------------------------------------
def _blueprint(**review) -> Blueprint:
    return Blueprint.model_validate(
        {"name": "x", "version": "1", "command": ["{python}", "{input}", "{output}"], "review": review}
    )


def test_the_review_block_is_validated_with_clear_messages():
    ok = ["{python}", "-m", "a", "curate", "{result}", "{decisions}", "{output}"]
    assert _blueprint(neurons="arrays", curate=ok).review.neurons == "arrays"
    for review, why in (
        (
            {"neurons": "arrays", "curate": [*ok, "{config}"]},
            "unknown placeholder {config}; allowed: {python}, {result}",
        ),
        ({"neurons": "arrays", "curate": ok[:5] + ok[6:]}, "the curate command must contain {decisions}"),
        ({"neurons": "../arrays", "curate": ok}, "must be a plain relative folder"),
        ({"neurons": "arrays"}, "curate"),
    ):
        with pytest.raises(ValidationError, match=json.dumps(why)[1:-1].replace("{", r"\{")):
            _blueprint(**review)
    plain = Blueprint.model_validate({"name": "x", "version": "1", "command": ["{python}", "{input}", "{output}"]})
    assert "review" not in plain.canonical()  # an analysis without review keeps its identity


# -- the decisions table on both databases ----------------------------------------------------------
@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_a_decision_number_is_taken_once(kind, tmp_path, request):
    url = (
        f"sqlite:///{tmp_path / 'jobs.sqlite'}"
        if kind == "sqlite"
        else request.getfixturevalue("postgres").database("review")
    )
    db = JobDB(url)
    row = {"job_id": "j", "dataset": "d", "seq": 1, "action": "reject", "neurons_json": "[3]", "user": "ann", "at": "t"}
    with db.session() as s, s.begin():
        s.add(ReviewAction(**row))
    with pytest.raises(IntegrityError), db.session() as s, s.begin():
        s.add(ReviewAction(**{**row, "user": "bob"}))  # another server took number 1 first
    with db.session() as s, s.begin():
        s.add(ReviewAction(**{**row, "dataset": "other"}))  # numbered per dataset
    db.close()


# -- the API on a real server -------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_the_review_api_serves_a_result_and_refuses_what_cannot_be_reviewed(kind, tmp_path, request):
    root = tmp_path / "root"
    db = None if kind == "sqlite" else request.getfixturevalue("postgres").database(f"api_{tmp_path.name[-12:]}")
    if db is not None:
        root.mkdir()
        accounts = Accounts.from_url(db)
        accounts.add_group("lab")
        accounts.add_user("ann", "lab")
        token = accounts.issue_token("ann").token
        accounts.engine.dispose()
    else:
        token = storage_with_user(root)
    (root / "lab" / "inputs").mkdir(parents=True)
    (root / "lab" / "inputs" / "s.npy").write_bytes(b"x")
    env = {"NCAAS_BLUEPRINTS": str(REVIEW_BLUEPRINTS)}
    with ServerProcess(root, db=db, env=env) as server, Client(server.url, token) as client:
        job = client.wait(client.submit("neurons-synthetic", ["s.npy"], config={"frames": 5000})["id"])
        assert job["state"] == "succeeded", job
        arrays = root / "lab" / "results" / job["id"] / "outputs" / "s.npy" / "arrays"
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=60) as http:
            base = f"/api/jobs/{job['id']}/review/s.npy"
            info = http.get(base).json()
            assert info["dims"] == [64, 64] and info["n_neurons"] == 20 and info["session_ids"] == ["day1", "day2"]
            neuron = http.get(f"{base}/neurons/3?points=500").json()
            raw = np.load(arrays / "C_raw.npy")[3]
            assert len(neuron["traces"]["C_raw"]["max"]) == 500
            assert neuron["traces"]["C_raw"]["max"][0] == pytest.approx(raw[:10].max(), rel=1e-4)
            assert set(neuron["traces"]) == {"C_raw", "C", "S"} and neuron["session_bounds"] == [0, 2500, 5000]
            png = http.get(f"{base}/image.png", params={"kind": "PNR"})
            assert png.headers["content-type"] == "image/png" and png.content[:4] == b"\x89PNG"
            assert http.get(f"{base}/neurons/20").json()["error"] == "no neuron 20: this result has neurons 0 to 19"
            resp = http.get(f"{base}/image.png", params={"kind": "max", "session": "day9"})
            assert resp.status_code == 409 and resp.json()["error"] == "no max image for day9"
            assert http.post(f"{base}/decisions", json={"action": "reject", "neurons": [2]}).status_code == 201
            resp = http.post(f"{base}/decisions", json={"action": "merge", "neurons": [2, 3]})
            assert resp.status_code == 409 and "undo its rejection" in resp.json()["error"]
            resp = http.post(f"{base}/decisions", json={"action": "explode", "neurons": [2]})
            assert resp.status_code == 400 and resp.json()["error"].startswith("malformed request: action")
            assert http.get(f"{base}/decisions", params={"since": 1}).json() == {"version": 1, "unchanged": True}
            resp = http.get(f"/api/jobs/{job['id']}/review/nope")
            assert resp.status_code == 404 and "has no dataset 'nope'" in resp.json()["error"]
            if kind == "sqlite":  # a curation is a job like any: a group whose budget is spent cannot start one
                reviews = root / "lab" / "results" / job["id"] / "reviews"
                ncaas("budget", "set", "lab", "0", "--root", str(root), check=True)
                resp = http.post(f"{base}/finish")
                assert resp.status_code == 400, resp.text
                said = resp.json()["error"]
                assert said.startswith(f"the curation of job {job['id']} [s.npy] was not started: group lab has")
                assert not reviews.exists(), "a refused curation writes no decisions file"
                assert http.get(f"{base}/decisions").json()["version"] == 1, "the review itself stays as it was"
                ncaas("budget", "remove", "lab", "--root", str(root), check=True)
            # finishing runs the analysis' curate command as a job: this one refuses, saying why
            curation = client.wait(http.post(f"{base}/finish").json()["id"])
            assert curation["state"] == "failed"
            assert "neurons-synthetic has no curation" in curation["tasks"][0]["message"]


def test_declaring_review_leaves_the_environment_as_it_was():
    from ncaas.blueprint import load_blueprint
    from ncaas.isolation.environments import spec_for_blueprint

    loaded = load_blueprint(Path(__file__).parents[1] / "analyses" / "caliali" / "blueprint.yaml")
    assert loaded.blueprint.review is not None
    bare = type(loaded)(loaded.blueprint.model_copy(update={"review": None}), loaded.path, "", None, False)
    with_review, without = spec_for_blueprint(loaded), spec_for_blueprint(bare)
    assert with_review is not None and without is not None
    assert with_review.key() == without.key()  # the curation runs in the analysis' own environment
    assert loaded.blueprint.content_hash() != bare.blueprint.content_hash()  # a new blueprint version
