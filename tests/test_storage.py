"""Group storage: layout, path refusal, atomic writes, hashing."""

import os

import pytest

from ncaas.exceptions import PathRefused
from ncaas.storage import Storage


@pytest.fixture
def storage(tmp_path):
    (tmp_path / "lab" / "inputs" / "sub").mkdir(parents=True)
    (tmp_path / "lab" / "inputs" / "sub" / "f.npy").write_bytes(b"abc")
    (tmp_path / "other" / "inputs").mkdir(parents=True)
    (tmp_path / "other" / "inputs" / "secret.npy").write_bytes(b"secret")
    return Storage(tmp_path)


def test_paths_resolve_inside_the_group(storage, tmp_path):
    assert storage.resolve("lab", "inputs", "sub/f.npy") == str(tmp_path / "lab" / "inputs" / "sub" / "f.npy")
    assert storage.resolve("lab", "inputs", "./sub//f.npy").endswith("lab/inputs/sub/f.npy")


@pytest.mark.parametrize(("path", "message"), [
    ("../other/inputs/secret.npy", "contains '..'; paths must stay inside your group's inputs/ folder"),
    ("sub/../../x", "contains '..'"),
    ("/etc/passwd", "is an absolute path; give a path relative to your group's inputs/ folder"),
    ("s3://bucket/x", "is an absolute path"),
    ("bad\nname.npy", "contains control characters"),
    ("tab\there", "contains control characters"),
    ("", "an empty path was given"),
    (".", "does not name a file or folder"),
])
def test_malformed_paths_are_refused(storage, path, message):
    with pytest.raises(PathRefused, match=message.replace("(", r"\(").replace(")", r"\)")):
        storage.resolve("lab", "inputs", path)


def test_symlinks_leading_out_are_refused(storage, tmp_path):
    os.symlink(tmp_path / "other" / "inputs" / "secret.npy", tmp_path / "lab" / "inputs" / "link.npy")
    with pytest.raises(PathRefused, match="symbolic link leading out of lab/inputs/"):
        storage.resolve("lab", "inputs", "link.npy")
    os.symlink(tmp_path / "lab" / "inputs" / "sub", tmp_path / "lab" / "inputs" / "inner")
    assert storage.resolve("lab", "inputs", "inner/f.npy")


@pytest.mark.parametrize("group", ["../x", "a/b", "", ".hidden", "x" * 65])
def test_bad_group_names_are_refused(storage, group):
    with pytest.raises(PathRefused, match="group name"):
        storage.area(group, "inputs")


def test_write_read_and_describe(storage):
    path = storage.join("lab", "results", "j", "x.json")
    storage.write_text(path, "hello")
    assert storage.read_text(path) == "hello"
    assert not [p for p in os.listdir(os.path.dirname(path)) if p.endswith(".tmp")]
    tree = storage.describe_tree(storage.join("lab", "inputs"))
    assert tree == [{"path": "sub/f.npy", "size": 3,
                     "sha256": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"}]


def test_iter_submissions_finds_every_group(storage, tmp_path):
    for group in ("lab", "other"):
        (tmp_path / group / "submissions").mkdir()
        (tmp_path / group / "submissions" / "s.submit.json").write_text("{}")
    (tmp_path / "lab" / "submissions" / "notes.txt").write_text("")
    assert [g for g, _ in storage.iter_submissions()] == ["lab", "other"]
