"""One contract for every storage backend: a local directory and S3 (a real SeaweedFS server).

Everything here goes through :class:`ncaas.storage.Storage` only, so the manager, CLI,
server and executors can rely on the same behaviour whatever the root is.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ncaas.exceptions import PathRefused, StorageError
from ncaas.storage import Storage

BACKENDS = ["local", "s3"]


@pytest.fixture(params=BACKENDS)
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    if request.param == "local":
        return Storage(tmp_path / "root")
    return Storage(request.getfixturevalue("s3_root"))


def _tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _local_folder(tmp_path: Path) -> Path:
    src = tmp_path / "dataset"
    (src / "sub").mkdir(parents=True)
    (src / "a.npy").write_bytes(b"A" * 10)
    (src / "sub" / "b.npy").write_bytes(b"B" * 3000)
    (src / "sub" / "c.txt").write_text("c")
    return src


def test_write_read_overwrite(storage: Storage) -> None:
    path = storage.join("lab", "results", "j1", "status", "d.json")
    storage.write_text(path, '{"state": "queued"}')
    assert json.loads(storage.read_text(path)) == {"state": "queued"}
    storage.write_bytes(path, b'{"state": "running"}')
    assert storage.read_bytes(path) == b'{"state": "running"}'
    assert storage.exists(path) and not storage.isdir(path)
    assert storage.isdir(storage.join("lab", "results", "j1"))
    assert storage.files(storage.join("lab", "results")) == [path]


def test_missing_files(storage: Storage) -> None:
    missing = storage.join("lab", "inputs", "nothing.npy")
    assert not storage.exists(missing) and not storage.isdir(missing)
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(missing)
    assert storage.files(missing) == []
    storage.remove(missing)  # removing what is not there is fine


def test_put_and_get_a_file(storage: Storage, tmp_path: Path) -> None:
    local = tmp_path / "one.npy"
    local.write_bytes(bytes(range(256)) * 100)
    target = storage.resolve("lab", "inputs", "one.npy")
    storage.put(local, target)
    assert storage.size(target) == 25600
    assert storage.sha256(target) == hashlib.sha256(local.read_bytes()).hexdigest()
    back = tmp_path / "back" / "one.npy"
    back.parent.mkdir()
    storage.get(target, back)
    assert back.read_bytes() == local.read_bytes()


def test_put_and_get_a_folder(storage: Storage, tmp_path: Path) -> None:
    src = _local_folder(tmp_path)
    target = storage.resolve("lab", "inputs", "dataset")
    storage.put(src, target)
    assert storage.isdir(target)
    assert [storage.relative(p) for p in storage.files(target)] == [
        "lab/inputs/dataset/a.npy",
        "lab/inputs/dataset/sub/b.npy",
        "lab/inputs/dataset/sub/c.txt",
    ]
    # Copying the same folder again replaces it in place (no nested dataset/dataset/).
    storage.put(src, target)
    assert len(storage.files(target)) == 3
    out = tmp_path / "got"
    storage.get(target, out)
    assert _tree(out) == _tree(src)
    # The trailing-slash form copies the folder's content into an existing folder.
    out2 = tmp_path / "got2"
    out2.mkdir()
    storage.get(target + "/", str(out2))
    assert _tree(out2) == _tree(src)


@pytest.mark.timeout(60)
def test_a_folder_is_put_without_its_links_and_fifos(storage: Storage, tmp_path: Path) -> None:
    """What a task leaves in its outputs is uploaded this way: /dev/zero or a FIFO would never end."""
    src = _local_folder(tmp_path)
    (src / "z.npy").symlink_to("/dev/zero")
    (src / "same.npy").symlink_to("a.npy")
    os.mkfifo(src / "sub" / "pipe")
    target = storage.resolve("lab", "results", "j/outputs/x")
    storage.put(src, target)
    assert [storage.relative(p) for p in storage.files(target)] == [
        "lab/results/j/outputs/x/a.npy",
        "lab/results/j/outputs/x/sub/b.npy",
        "lab/results/j/outputs/x/sub/c.txt",
    ]
    assert [e["path"] for e in storage.describe_tree(target)] == ["a.npy", "sub/b.npy", "sub/c.txt"]
    assert storage.kind(target) == "folder" and storage.kind(f"{target}/a.npy") == "file"


def test_describe_tree_and_hashes(storage: Storage, tmp_path: Path) -> None:
    src = _local_folder(tmp_path)
    target = storage.resolve("lab", "inputs", "dataset")
    storage.put(src, target)
    tree = storage.describe_tree(target)
    assert [(e["path"], e["size"]) for e in tree] == [("a.npy", 10), ("sub/b.npy", 3000), ("sub/c.txt", 1)]
    assert tree[1]["sha256"] == hashlib.sha256(b"B" * 3000).hexdigest()
    single = storage.describe_tree(f"{target}/a.npy")
    assert single == [{"path": "a.npy", "size": 10, "sha256": hashlib.sha256(b"A" * 10).hexdigest()}]


def test_remove_a_folder(storage: Storage, tmp_path: Path) -> None:
    target = storage.resolve("lab", "inputs", "dataset")
    storage.put(_local_folder(tmp_path), target)
    keep = storage.resolve("lab", "inputs", "keep.npy")
    storage.write_bytes(keep, b"k")
    storage.remove(target)
    assert not storage.exists(target)
    assert storage.files(storage.area("lab", "inputs")) == [keep]


def _elsewhere(storage: Storage, action: str, path: str, text: str = "") -> None:
    """Write or remove ``path`` from another process, as another client or a worker node would."""
    code = (
        "import sys; from ncaas.storage import Storage; s = Storage(sys.argv[1]); "
        "s.write_text(sys.argv[3], sys.argv[4]) if sys.argv[2] == 'write' else s.remove(sys.argv[3])"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, storage.url, action, path, text],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def test_glob_and_submissions_seen_as_they_arrive(storage: Storage) -> None:
    assert list(storage.iter_submissions()) == []
    first = storage.join("lab", "submissions", "one.submit.json")
    storage.write_text(first, "{}")
    storage.write_text(storage.join("lab", "submissions", "notes.txt"), "not a submission")
    assert list(storage.iter_submissions()) == [("lab", first)]
    # Submissions written later by other clients are seen by the next scans.
    second = storage.join("other", "submissions", "two.submit.json")
    _elsewhere(storage, "write", second, "{}")
    assert list(storage.iter_submissions()) == [("lab", first), ("other", second)]
    third = storage.join("lab", "submissions", "three.submit.json")
    _elsewhere(storage, "write", third, "{}")
    assert [p for _, p in storage.iter_submissions()] == [first, third, second]
    assert storage.glob("*/submissions/*.json") == [first, third, second]


def test_folders_that_are_no_group_are_skipped_and_named(storage: Storage) -> None:
    good = storage.join("lab", "submissions", "one.submit.json")
    storage.write_text(good, "{}")
    storage.write_text(storage.join("bad group", "submissions", "two.submit.json"), "{}")
    skipped: dict[str, str] = {}
    assert [p for _, p, _ in storage.submission_stamps(skipped)] == [good]
    assert list(skipped) == ["bad group"] and list(storage.skipped_folders()) == ["bad group"]
    assert skipped["bad group"].startswith("folder 'bad group' holds submissions/ but its name is not a valid")
    assert storage.entry_kind(good) == "file" and storage.entry_kind(storage.join("lab", "submissions")) == "folder"
    assert storage.entry_kind(storage.join("lab", "nothing")) == "missing"
    assert storage.read_head(good, 1) == b"{"


def test_a_file_changed_elsewhere_is_read_fresh(storage: Storage) -> None:
    path = storage.join("lab", "results", "j", "status", "x.json")
    storage.write_text(path, "1")
    assert storage.read_text(path) == "1" and storage.size(path) == 1
    assert storage.exists(path)
    _elsewhere(storage, "write", path, "22")
    assert storage.read_text(path) == "22" and storage.size(path) == 2
    assert storage.files(storage.join("lab", "results", "j")) == [path]
    _elsewhere(storage, "remove", path)
    assert not storage.exists(path)
    assert storage.files(storage.join("lab", "results", "j")) == []


def test_a_growing_file_is_read_from_an_offset(storage: Storage) -> None:
    path = storage.join("lab", "results", "j", "logs", "x.log")
    storage.write_text(path, "hello ")
    assert storage.read_from(path, 0) == b"hello " and storage.read_from(path, 6) == b""
    storage.write_text(path, "hello world\n")
    assert storage.read_from(path, 6) == b"world\n"
    with pytest.raises(FileNotFoundError):
        storage.read_from(storage.join("lab", "results", "j", "logs", "none.log"), 0)


def test_another_process_sees_the_same_root(storage: Storage) -> None:
    """The URL names the root completely: a separate process (a worker node) reads the same data."""
    path = storage.join("lab", "configs", "c.json")
    storage.write_text(path, '{"x": 1}')
    code = (
        "import sys; from ncaas.storage import Storage; s = Storage(sys.argv[1]); "
        "print(s.read_text(s.join('lab', 'configs', 'c.json')))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, storage.url], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == '{"x": 1}'


def test_paths_stay_inside_the_group(storage: Storage) -> None:
    assert storage.relative(storage.resolve("lab", "inputs", "./a//b.npy")) == "lab/inputs/a/b.npy"
    for bad in ("../other/inputs/x", "/etc/passwd", "s3://elsewhere/x", "a\nb"):
        with pytest.raises(PathRefused):
            storage.resolve("lab", "inputs", bad)


def test_unreachable_root_is_a_clear_error(storage: Storage) -> None:
    with pytest.raises(StorageError, match="cannot open storage root"):
        Storage("nosuchscheme-xyz://bucket/prefix")
