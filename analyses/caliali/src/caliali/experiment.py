"""Experiments: ordered sessions, each made of one or more video files.

An experiment comes from a manifest (YAML)::

    # manifest.yaml -- paths relative to this file
    sessions:
      - id: day1
        files: [day1_b1.avi, day1_b2.avi]
      - id: day2
        files: [day2.avi]
    dataset: /mov      # optional: array inside HDF5/zarr/NWB files
    fs: 10             # optional: frame rate, Hz

or from a folder of videos: files in natural sort order (``day2`` before
``day10``), names ending in ``_b<k>`` grouped into one session in ``k``
order -- the pieces :func:`split_files` (``caliali split``) writes. A folder
holding ``manifest.yaml`` is read through its manifest; a single video file
is a one-session experiment.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from caliali.exceptions import ManifestError
from caliali.io import VIDEO_SUFFIXES, is_video, open_video, split_video

__all__ = [
    "Experiment",
    "Session",
    "group_files",
    "load_experiment",
    "natural_key",
    "split_files",
    "write_manifest",
]

MANIFEST_NAMES = ("manifest.yaml", "manifest.yml")
_PIECE = re.compile(r"^(?P<base>.+)_b(?P<k>\d+)$")


@dataclass(frozen=True)
class Session:
    """One recording session: its files, in time order."""

    id: str
    files: tuple[Path, ...]
    dataset: str | None = None
    crop: tuple[int, int, int, int] | None = None  # the rectangle of every frame read (VideoReader.set_crop)

    def open(self, path: Path) -> Any:
        """One of the session's files as a `caliali.io.VideoReader`, cropped as the session is."""
        return open_video(path, dataset=self.dataset, crop=self.crop)

    def n_frames(self) -> int:
        """Frames in all of the session's files (reads only the headers)."""
        return sum(count for count in self.frame_counts())

    def frame_counts(self) -> list[int]:
        """Frames per file."""
        counts = []
        for path in self.files:
            with self.open(path) as video:
                counts.append(video.n_frames)
        return counts


@dataclass(frozen=True)
class Experiment:
    """An ordered list of sessions (the true sessions, not file pieces)."""

    sessions: tuple[Session, ...]
    source: Path | None = None
    fs: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def files(self) -> list[Path]:
        """Every file, session by session, in time order."""
        return [path for session in self.sessions for path in session.files]

    @property
    def same_ses_id(self) -> list[int]:
        """For every file, the 1-based number of its session (CaliAli's ``same_ses_id``)."""
        return [i for i, session in enumerate(self.sessions, start=1) for _ in session.files]

    @property
    def session_ids(self) -> list[str]:
        return [session.id for session in self.sessions]

    def session_frames(self) -> list[int]:
        """Frames per session (reads only file headers)."""
        return [session.n_frames() for session in self.sessions]

    def frame_shape(self) -> tuple[int, int]:
        """The common (h, w) of every file, cropped as its session is; error if files disagree."""
        return self._shape(cropped=True)

    def full_shape(self) -> tuple[int, int]:
        """The common (h, w) of every file before any crop; error if files disagree."""
        return self._shape(cropped=False)

    def _shape(self, *, cropped: bool) -> tuple[int, int]:
        shapes: dict[tuple[int, int], Path] = {}
        for session in self.sessions:
            for path in session.files:
                with open_video(path, dataset=session.dataset) as video:
                    shapes.setdefault(video.frame_shape, path)
        if len(shapes) != 1:
            listing = "; ".join(f"{p.name}: {h}x{w}" for (h, w), p in shapes.items())
            raise ManifestError(f"the experiment's files have different frame sizes ({listing}); crop them to one size")
        if cropped:
            first = self.sessions[0]
            with first.open(first.files[0]) as video:  # refuses a crop reaching past the frame
                return video.frame_shape
        return next(iter(shapes))

    def cropped(self, crop: tuple[int, int, int, int] | None) -> Experiment:
        """The same experiment with every frame of every session read as ``crop`` (top, bottom, left, right)."""
        sessions = tuple(replace(s, crop=crop) for s in self.sessions)
        return replace(self, sessions=sessions)


def natural_key(name: str) -> tuple:
    """Sort key treating digit runs as numbers: ``day2`` < ``day10``."""
    return tuple(
        (0, int(part), "") if part.isdigit() else (1, 0, part.lower()) for part in re.split(r"(\d+)", name) if part
    )


def group_files(paths: Iterable[Path], *, dataset: str | None = None) -> list[Session]:
    """Group videos into sessions: ``<base>_b<k>`` pieces share session ``<base>``."""
    groups: dict[str, list[tuple[int, Path]]] = {}
    for path in paths:
        stem = Path(path).name[: -len(Path(path).suffix)] if Path(path).suffix else Path(path).name
        match = _PIECE.match(stem)
        base, k = (match["base"], int(match["k"])) if match else (stem, 0)
        groups.setdefault(base, []).append((k, Path(path)))
    sessions = []
    for base in sorted(groups, key=natural_key):
        members = sorted(groups[base], key=lambda item: (item[0], natural_key(item[1].name)))
        sessions.append(Session(id=base, files=tuple(p for _, p in members), dataset=dataset))
    return sessions


def _from_folder(folder: Path, *, dataset: str | None, ignore: Sequence[str] = ()) -> Experiment:
    for name in MANIFEST_NAMES:
        if (folder / name).is_file():
            return _from_manifest(folder / name, dataset=dataset)
    skip = {(folder / name).resolve() for name in ignore}
    videos = [p for p in folder.iterdir() if is_video(p) and not p.name.startswith(".") and p.resolve() not in skip]
    if not videos:
        raise ManifestError(f"{folder}: no videos here ({', '.join(VIDEO_SUFFIXES)}) and no manifest.yaml")
    return Experiment(sessions=tuple(group_files(videos, dataset=dataset)), source=folder)


def _session_entries(raw: Any, manifest: Path) -> list[tuple[str, Any]]:
    if isinstance(raw, dict):
        return [(str(key), value) for key, value in raw.items()]
    if isinstance(raw, list) and all(isinstance(entry, dict) for entry in raw):
        entries = []
        for number, entry in enumerate(raw, start=1):
            if "files" not in entry:
                raise ManifestError(f"{manifest}: sessions[{number - 1}] has no 'files' key")
            entries.append((str(entry.get("id", f"session{number}")), entry["files"]))
        return entries
    raise ManifestError(f"{manifest}: 'sessions' must be a list of {{id, files}} entries or a mapping id -> files")


def _from_manifest(manifest: Path, *, dataset: str | None) -> Experiment:
    try:
        raw = yaml.safe_load(manifest.read_text())
    except yaml.YAMLError as exc:
        raise ManifestError(f"{manifest}: not valid YAML ({exc})") from exc
    if not isinstance(raw, dict) or not raw.get("sessions"):
        raise ManifestError(f"{manifest}: needs a non-empty 'sessions' key (see caliali.experiment)")
    dataset = dataset if dataset is not None else raw.get("dataset")
    sessions, seen = [], set()
    for sid, files in _session_entries(raw["sessions"], manifest):
        if sid in seen:
            raise ManifestError(f"{manifest}: session id {sid!r} appears twice")
        seen.add(sid)
        files = [files] if isinstance(files, str) else files
        if not isinstance(files, list) or not files:
            raise ManifestError(f"{manifest}: session {sid!r} needs a non-empty list of files")
        paths = []
        for name in files:
            path = Path(str(name)) if Path(str(name)).is_absolute() else manifest.parent / str(name)
            if not path.exists():
                raise ManifestError(f"{manifest}: session {sid!r} lists {name!r}, which does not exist ({path})")
            if not is_video(path):
                raise ManifestError(
                    f"{manifest}: session {sid!r} lists {name!r}, not a video ({', '.join(VIDEO_SUFFIXES)})"
                )
            paths.append(path)
        sessions.append(Session(id=sid, files=tuple(paths), dataset=dataset))
    fs = raw.get("fs")
    extra = {k: v for k, v in raw.items() if k not in ("sessions", "dataset", "fs")}
    return Experiment(sessions=tuple(sessions), source=manifest, fs=float(fs) if fs else None, extra=extra)


def load_experiment(path: Path | str, *, dataset: str | None = None, ignore: Sequence[str] = ()) -> Experiment:
    """Load an experiment from a manifest, a folder of videos, or one video.

    Parameters
    ----------
    path : path-like
        ``manifest.yaml``; a folder (its ``manifest.yaml`` if present, else its
        videos grouped by :func:`group_files`); or a single video file.
    dataset : str, optional
        Array inside HDF5/zarr/NWB files; overrides the manifest's ``dataset``.
    ignore : sequence of str, optional
        Names of files in a folder that are not videos of the experiment
        (e.g. a region-of-interest mask saved as TIFF beside the videos).

    Raises
    ------
    ManifestError
        Naming the manifest key or file that is wrong.
    """
    path = Path(path)
    if not path.exists():
        raise ManifestError(f"{path}: no such manifest, folder or video")
    if path.suffix.lower() in (".yaml", ".yml"):
        return _from_manifest(path, dataset=dataset)
    if path.is_dir() and path.suffix.lower() != ".zarr":
        return _from_folder(path, dataset=dataset, ignore=ignore)
    if is_video(path):
        return Experiment(sessions=(Session(id=path.stem, files=(path,), dataset=dataset),), source=path)
    raise ManifestError(f"{path}: not a manifest (.yaml), a folder, or a video ({', '.join(VIDEO_SUFFIXES)})")


def write_manifest(experiment: Experiment | Sequence[Session], path: Path | str, **extra: Any) -> Path:
    """Write a manifest for ``experiment``; file paths relative to its folder when possible."""
    path = Path(path)
    sessions = experiment.sessions if isinstance(experiment, Experiment) else tuple(experiment)

    def rel(p: Path) -> str:
        try:
            return Path(p).resolve().relative_to(path.parent.resolve()).as_posix()
        except ValueError:
            return str(Path(p).resolve())

    doc: dict[str, Any] = {"sessions": [{"id": s.id, "files": [rel(p) for p in s.files]} for s in sessions]}
    doc["same_ses_id"] = [i for i, s in enumerate(sessions, start=1) for _ in s.files]
    datasets = {s.dataset for s in sessions}
    if len(datasets) == 1 and None not in datasets:
        doc["dataset"] = datasets.pop()
    doc.update({k: v for k, v in extra.items() if v is not None})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def split_files(
    files: Sequence[Path | str],
    out_dir: Path | str,
    *,
    max_frames: int,
    dataset: str | None = None,
    session_ids: Sequence[str] | None = None,
    memory_budget: int | str | None = "1GB",
) -> Experiment:
    """Split each file (one session each) into pieces and write ``manifest.yaml``.

    Every piece holds at most ``max_frames`` frames, nothing is dropped and
    files no longer than ``max_frames`` stay whole (see
    :func:`caliali.io.split_sizes`). Pieces are named ``<name>_b1, _b2, ...``.

    Returns
    -------
    Experiment
        The sessions (ids default to the file names) and their pieces, as
        written to ``<out_dir>/manifest.yaml``.
    """
    out_dir = Path(out_dir)
    ids = list(session_ids) if session_ids is not None else [Path(f).stem for f in files]
    if len(set(ids)) != len(ids):
        raise ManifestError(f"two input files would make the same session id: {ids}; rename one or pass session ids")
    sessions = []
    for sid, path in zip(ids, files, strict=True):
        pieces = split_video(path, out_dir, max_frames=max_frames, dataset=dataset, memory_budget=memory_budget)
        # pieces hold one array each, found without a dataset name
        sessions.append(Session(id=sid, files=tuple(pieces)))
    experiment = Experiment(sessions=tuple(sessions), source=out_dir / MANIFEST_NAMES[0])
    write_manifest(experiment, out_dir / MANIFEST_NAMES[0], max_frames=int(max_frames))
    return experiment
