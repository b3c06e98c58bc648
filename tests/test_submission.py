"""Every rejection of a submission, with its message, written into the job's results folder."""

import json
import os

import pytest
from ncaas_clirunner import cli, flat
from ncaas_testutil import read_json, submit, write_json

from ncaas.exceptions import SubmissionRejected
from ncaas.jobs.states import JobState
from ncaas.submission import parse_submit_file


def _reject(manager, root, body, *, name="s", config=None, group="lab"):
    path = submit(root, name, body, config=config, group=group)
    job = manager.ingest_file(group, str(path))
    assert job.state == JobState.REJECTED, job.cause
    results = root / group / "results" / job.id
    end = read_json(results / "end.json")
    assert end["state"] == "rejected"
    error = (results / "error.txt").read_text()
    assert "was rejected; nothing ran" in error
    assert manager.db.tasks(job.id) == []
    for problem in end["errors"]:
        assert problem in error
    return "\n".join(end["errors"])


def test_unknown_analysis(manager, root):
    text = _reject(manager, root, {"analysis": "nosuch", "dataname": "a.npy"})
    assert "unknown analysis 'nosuch'; available: " in text and "framestats" in text


def test_group_not_allowed(manager, root):
    text = _reject(manager, root, {"analysis": "fs-private", "dataname": "a.npy"})
    assert text == "group 'lab' is not allowed to run 'fs-private'; allowed groups: vip"


def test_dataset_missing(manager, root):
    text = _reject(manager, root, {"analysis": "framestats", "dataname": ["a.npy", "gone.npy"]})
    assert text == "dataset 'gone.npy' not found in lab/inputs/; upload it there first"


def test_dataset_listed_twice(manager, root):
    text = _reject(manager, root, {"analysis": "framestats", "dataname": ["a.npy", "lab/inputs/a.npy"]})
    assert text == "dataset 'lab/inputs/a.npy' is listed twice; list each dataset once"


def test_dataset_path_escaping_the_group(manager, root):
    text = _reject(manager, root, {"analysis": "framestats", "dataname": ["../../etc/passwd", "/etc/passwd"]})
    assert "'../../etc/passwd' contains '..'" in text
    assert "'/etc/passwd' is an absolute path" in text


def test_dataset_symlink_leading_out(manager, root, tmp_path):
    (tmp_path / "outside.npy").write_bytes(b"x")
    os.symlink(tmp_path / "outside.npy", root / "lab" / "inputs" / "link.npy")
    text = _reject(manager, root, {"analysis": "framestats", "dataname": "link.npy"})
    assert "'link.npy' is a symbolic link leading out of lab/inputs/" in text


def test_config_missing(manager, root):
    text = _reject(manager, root, {"analysis": "framestats", "dataname": "a.npy", "configname": "nope.yaml"})
    assert text == (
        "config 'nope.yaml' not found in lab/configs/; upload it there first "
        "(ncaas submit --config FILE does this for you)"
    )


def test_config_not_yaml(manager, root):
    (root / "lab" / "configs").mkdir(parents=True)
    (root / "lab" / "configs" / "bad.yaml").write_text("stats: [mean\n")
    text = _reject(manager, root, {"analysis": "framestats", "dataname": "a.npy", "configname": "bad.yaml"})
    assert text.startswith("config 'bad.yaml' is not valid YAML/JSON at line")


def test_config_not_matching_schema(manager, root):
    text = _reject(
        manager,
        root,
        {"analysis": "framestats", "dataname": "a.npy"},
        config={"stats": ["median"], "sleep_per_frame": -1, "fail": "yes", "colour": "red"},
    )
    assert "config field 'colour': unknown option; allowed options: batch_frames, cpu_seconds, fail" in text
    assert "config field 'fail': 'yes' is not of type 'boolean'; allowed: boolean" in text
    assert "config field 'sleep_per_frame': -1 is less than the minimum of 0; allowed: number >= 0" in text
    assert (
        "config field 'stats.0': 'median' is not one of ['mean', 'std', 'min', 'max']; "
        'allowed: one of "mean", "std", "min", "max"'
    ) in text


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"{not json", "s.submit.json is not valid JSON (line 1, column 2"),
        (b"[1, 2]", "s.submit.json must hold a JSON object with dataname, configname"),
        (b'{"analysis": "framestats"}', "s.submit.json: field 'dataname': missing; name the dataset(s) to analyse"),
        (b'{"dataname": 5}', "s.submit.json: field 'dataname': Input should be a valid list"),
        (b'{"dataname": []}', "s.submit.json: field 'dataname': lists no dataset"),
        (
            b'{"dataname": "a.npy", "extra": 1}',
            "s.submit.json: field 'extra': unknown field; allowed: analysis, pipeline, dataname, configname, timestamp",
        ),
        (b"\xff\xfe", "s.submit.json is not UTF-8 text"),
    ],
)
def test_malformed_submit_file(manager, root, raw, message):
    path = root / "lab" / "submissions" / "s.submit.json"
    path.parent.mkdir(parents=True)
    path.write_bytes(raw)
    job = manager.ingest_file("lab", str(path))
    assert job.state == JobState.REJECTED
    assert message in (root / "lab" / "results" / job.id / "error.txt").read_text()


def test_same_submission_seen_twice_runs_once(manager, root):
    body = {"analysis": "framestats", "dataname": "a.npy", "timestamp": "2024-01-01T00:00:00"}
    path = submit(root, "once", body)
    first = manager.ingest_file("lab", str(path))
    assert first.state == JobState.QUEUED
    assert manager.ingest_file("lab", str(path)).id == first.id  # the same file seen again
    assert manager.scan() == []  # and by a scan (e.g. after a restart)
    text = _reject(manager, root, body, name="copy")
    assert text == (
        f"copy.submit.json is identical to once.submit.json (job {first.id}), which was already run; "
        "a submission runs once — change its timestamp to run it again"
    )
    assert len(manager.db.jobs()) == 2


def test_neurocaas_form_with_default_analysis(manager, root):
    manager.default_analysis = "framestats"
    write_json(root / "lab" / "configs" / "config.json", {"stats": ["mean"]})
    path = submit(
        root, "nc", {"dataname": "lab/inputs/folder", "configname": "lab/configs/config.json", "timestamp": 1700000000}
    )
    job = manager.ingest_file("lab", str(path))
    assert job.state == JobState.QUEUED and job.analysis == "framestats"
    assert job.config["stats"] == ["mean"] and job.config["batch_frames"] == 64  # defaults merged
    [task] = manager.db.tasks(job.id)
    assert task.dataset == "folder" and task.dataset_rel == "folder"
    job = manager.run_job(job.id)
    assert job.state == JobState.SUCCEEDED
    outputs = root / "lab" / "results" / job.id / "outputs" / "folder"
    assert sorted(p.name for p in outputs.iterdir()) == ["summary.json", "x.stats.csv", "y.stats.csv"]
    assert (outputs / "x.stats.csv").read_text().startswith("frame,mean\n0,")


def test_neurocaas_form_without_default_names_the_fix(manager, root):
    text = _reject(manager, root, {"dataname": "a.npy"})
    assert text.startswith('the submit file names no analysis; add "analysis": one of ')


def test_parse_accepts_a_single_dataname():
    assert parse_submit_file(json.dumps({"dataname": "x"}).encode()).dataname == ["x"]
    with pytest.raises(SubmissionRejected):
        parse_submit_file(b"")


def test_cli_submit_prints_every_rejection(root, tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("stats: [median]\n")
    done = cli(
        "submit", "framestats", "a.npy", "missing.npy", "--config", str(config), "--group", "lab", "--root", str(root)
    )
    assert done.exit_code == 2
    printed = flat(done.stderr)
    assert "submission rejected" in printed
    assert "dataset 'missing.npy' not found in lab/inputs/; upload it there first" in printed
    assert "config field 'stats.0': 'median' is not one of" in printed
    [job_dir] = (root / "lab" / "results").iterdir()
    assert "missing.npy" in (job_dir / "error.txt").read_text()


def test_dataset_keys_are_unique_reversible_and_safe_file_names():
    """Ordinary names keep the keys they always had; no two names share a key; a key is never
    hidden, never holds '/', and fits in a file name with room for what is added to it."""
    from itertools import product

    from ncaas.submission import KEY_MAX_BYTES, dataset_key, dataset_name

    assert [dataset_key(n) for n in ("a.npy", "sessions/day1", "x/y.npy", "my_movie.avi", "a b.tif")] == [
        "a.npy",
        "sessions__day1",
        "x__y.npy",
        "my_movie.avi",
        "a b.tif",
    ]
    parts = ["a", "_", "__", "a_", "_a", "a__b", ".a", "%", "A"]
    names = {"/".join(p) for n in (1, 2, 3) for p in product(parts, repeat=n)}
    names |= {"x" * 250, "x" * 249 + "y", "é" * 120, "d/" * 60 + "z", "%" * 90}
    keys = {}
    for name in names:
        key = dataset_key(name)
        assert "/" not in key and not key.startswith(".") and len(key.encode()) <= KEY_MAX_BYTES, (name, key)
        assert keys.setdefault(key, name) == name, f"{name!r} and {keys[key]!r} share the key {key!r}"
        assert dataset_name(key) in (name, None)
        assert dataset_name(key) == name or len(name.encode()) > KEY_MAX_BYTES // 3


def test_a_field_taking_a_number_or_a_word_says_both_in_words():
    from ncaas.submission import config_problems

    schema = {
        "type": "object",
        "properties": {
            "min_pnr": {
                "anyOf": [{"type": "number", "minimum": 0, "maximum": 100}, {"type": "string", "const": "auto"}]
            }
        },
    }
    assert config_problems({"min_pnr": "auto"}, schema) == [] and config_problems({"min_pnr": 4}, schema) == []
    assert config_problems({"min_pnr": -1}, schema) == [
        "config field 'min_pnr': -1 is not allowed; allowed: number >= 0 and <= 100 or \"auto\""
    ]
