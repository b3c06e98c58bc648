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


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("../other/inputs/secret.npy", "contains '..'; paths must stay inside your group's inputs/ folder"),
        ("sub/../../x", "contains '..'"),
        ("/etc/passwd", "is an absolute path; give a path relative to your group's inputs/ folder"),
        ("s3://bucket/x", "is an absolute path"),
        ("bad\nname.npy", "contains control characters"),
        ("tab\there", "contains control characters"),
        ("", "an empty path was given"),
        (".", "does not name a file or folder"),
    ],
)
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
    assert tree == [
        {"path": "sub/f.npy", "size": 3, "sha256": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"}
    ]


def test_iter_submissions_finds_every_group(storage, tmp_path):
    for group in ("lab", "other"):
        (tmp_path / group / "submissions").mkdir()
        (tmp_path / group / "submissions" / "s.submit.json").write_text("{}")
    (tmp_path / "lab" / "submissions" / "notes.txt").write_text("")
    assert [g for g, _ in storage.iter_submissions()] == ["lab", "other"]


@pytest.fixture
def odd_folder(storage, tmp_path):
    """lab/inputs/ds holding a file, links (inside, to /dev/zero, to another group) and a FIFO."""
    ds = tmp_path / "lab" / "inputs" / "ds"
    (ds / "sub").mkdir(parents=True)
    (ds / "a.npy").write_bytes(b"abc")
    (ds / "same.npy").symlink_to("a.npy")
    (ds / "z.npy").symlink_to("/dev/zero")
    (ds / "peek.npy").symlink_to(tmp_path / "other" / "inputs" / "secret.npy")
    (ds / "up").symlink_to(tmp_path / "other" / "inputs")
    os.mkfifo(ds / "sub" / "pipe")
    return ds


@pytest.mark.timeout(30)
def test_links_and_special_files_are_described_as_such_never_followed_or_opened(storage, odd_folder, tmp_path):
    tree = storage.describe_tree(str(odd_folder))
    assert tree == [
        {"path": "a.npy", "size": 3, "sha256": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"},
        {"path": "peek.npy", "kind": "symlink", "target": str(tmp_path / "other" / "inputs" / "secret.npy")},
        {"path": "same.npy", "kind": "symlink", "target": "a.npy"},
        {"path": "sub/pipe", "kind": "fifo"},
        {"path": "up", "kind": "symlink", "target": str(tmp_path / "other" / "inputs")},
        {"path": "z.npy", "kind": "symlink", "target": "/dev/zero"},
    ]
    assert storage.files(str(odd_folder)) == [str(odd_folder / "a.npy")]
    assert storage.kind(str(odd_folder / "z.npy")) == "symlink" and storage.kind(str(odd_folder)) == "folder"
    assert storage.describe_tree(str(odd_folder / "z.npy"), follow=False) == [
        {"path": "z.npy", "kind": "symlink", "target": "/dev/zero"}
    ]
    assert sorted(storage.unreadable(str(odd_folder))) == [
        ("peek.npy", "symlink", str(tmp_path / "other" / "inputs" / "secret.npy")),
        ("sub/pipe", "fifo", None),
        ("up", "symlink", str(tmp_path / "other" / "inputs")),
        ("z.npy", "symlink", "/dev/zero"),
    ]
    out = tmp_path / "copied"
    storage.get(str(odd_folder), out)
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == ["a.npy"]


@pytest.mark.timeout(30)
@pytest.mark.parametrize(("name", "words"), [("sub/pipe", "a FIFO"), ("z.npy", "a character device")])
def test_reading_a_fifo_or_a_device_is_refused_not_attempted(storage, odd_folder, name, words):
    from ncaas.exceptions import SpecialFileRefused

    for read in (storage.read_bytes, storage.sha256):
        with pytest.raises(SpecialFileRefused, match=f"lab/inputs/ds/{name} is {words}"):
            read(str(odd_folder / name))


def test_a_file_replaced_after_it_was_listed_is_not_read(odd_folder):
    from ncaas.exceptions import SpecialFileRefused
    from ncaas.storage import localtree

    [(path, listed)] = localtree.regular_files(str(odd_folder))
    (odd_folder / "b.npy").write_bytes(b"another file under the same name")
    os.replace(odd_folder / "b.npy", path)
    with pytest.raises(SpecialFileRefused, match="replaced"):
        localtree.open_regular(path, expect=listed)
    os.replace(odd_folder / "same.npy", path)  # now a link: O_NOFOLLOW refuses it
    with pytest.raises(SpecialFileRefused, match="symbolic link"):
        localtree.open_regular(path, expect=listed)
    os.unlink(path)
    os.mkfifo(path)
    with pytest.raises(SpecialFileRefused, match="FIFO"):
        localtree.open_regular(path, expect=listed)
