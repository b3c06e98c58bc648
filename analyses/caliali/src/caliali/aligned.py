"""caliali's preprocessing alone: motion correction and session alignment, writing the aligned
movie of every session, for another extractor to read (``python -m caliali.aligned``).

The stages are :mod:`caliali.pipeline`'s own (the same code, resumable the same way), stopped
before extraction. Outputs in ``OUT``:

- ``aligned/<session>.tif`` (or ``.npy`` with ``movie_format: npy``): each session's frames,
  motion-corrected and warped into the common frame, float32 (t, h, w), in the order of the
  experiment; pixels outside the valid mask are 0.
- ``valid_mask.npy``: pixels valid in every session after alignment.
- ``alignment/`` (fields, QC figures, ``alignment.json``) when there are several sessions.
- ``summary.json``: sessions, frames, the gSig used and its source, alignment source and
  reliability, the config (sorted keys; the same for every run of the same input and config).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np

from caliali import __version__
from caliali.config import load_config
from caliali.exceptions import CalialiError, InputError
from caliali.experiment import load_experiment

__all__ = ["MOVIE_FORMATS", "align"]

MOVIE_FORMATS = ("tif", "npy")
_WRITE_FRAMES = 256  # frames read from the aligned store and written at once


def align(
    input: str | Path,
    output: str | Path,
    *,
    config: dict[str, Any] | None = None,
    movie_format: str = "tif",
    progress: Any = None,
) -> dict[str, Any]:
    """Correct motion and align the sessions of ``input``, writing each session's aligned movie.

    Parameters
    ----------
    input : path
        An experiment, as :func:`caliali.pipeline.run` takes it.
    output : path
        Folder for ``aligned/``, ``alignment/`` and ``summary.json``.
    config : mapping, optional
        caliali's parameters (extraction's are ignored).
    movie_format : {'tif', 'npy'}
        File type of the aligned movies.

    Returns
    -------
    dict
        What ``summary.json`` holds.
    """
    from caliali import pipeline as p

    if movie_format not in MOVIE_FORMATS:
        raise InputError(f"movie_format {movie_format!r} is not one of {', '.join(MOVIE_FORMATS)}")
    given = load_config(config or {})
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    work = out / "work"
    experiment = load_experiment(input, dataset=given.dataset or None)
    if not experiment.sessions:
        raise InputError(f"{input}: no sessions found; give a folder of videos, a manifest or a video file")
    experiment = experiment.cropped(given.crop_box)
    experiment.frame_shape()  # refuses a crop reaching past the frame
    rate = p.resolve_fs(experiment, given.fs)
    cfg = given.with_fs(rate.fs)
    p._check_session_lengths(experiment, cfg)
    state = p._State(work, p._fingerprint(experiment, given))
    report = p._Reporter(progress)
    gsig_from = "set"
    if cfg.gSig == "auto":
        cfg, gsig_from = p._estimate_gsig(experiment, cfg, report)
    ids = [s.id for s in experiment.sessions]
    motion = p._motion(experiment, cfg, work, report, state)
    summary: dict[str, Any] = {"alignment": None}
    if len(ids) > 1 and cfg.alignment:
        projections = p._projections(experiment, cfg, motion, work, out, report, state)
        alignment = p._alignment(experiment, cfg, projections, motion, out, report, state)
        video, bounds, valid = p._apply(alignment, cfg, motion, work, report, state)
        summary["alignment"] = {"source": alignment.source, "reliability": float(alignment.reliability)}
    else:
        video, bounds, valid = p._unaligned(motion, cfg, work, report)
    files = _write_movies(video, bounds, valid, ids, out / "aligned", movie_format)
    summary.update(
        caliali_version=__version__,
        sessions=ids,
        session_frames=[int(b - a) for a, b in zip(bounds[:-1], bounds[1:])],
        movies=files,
        frame_shape=list(valid.shape),
        gSig=cfg.gSig,
        gSig_from=gsig_from,
        fs=rate.fs,
        config=given.model_dump(),
        movie_format=movie_format,
    )
    (out / "summary.json").write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n")
    shutil.rmtree(work, ignore_errors=True)
    if progress is not None:
        progress(1.0, f"done: {len(ids)} session(s) aligned, {valid.shape[0]}x{valid.shape[1]} px")
    return summary


def _write_movies(
    video: Path, bounds: np.ndarray, valid: np.ndarray, ids: list[str], folder: Path, movie_format: str
) -> list[str]:
    """Each session's frames of the aligned store as one file, a block of frames at a time."""
    import tifffile

    from caliali.store import FrameStore

    store = FrameStore.open(video)
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder.parent / "valid_mask.npy", valid)  # beside aligned/, which holds movies only
    names = []
    for sid, start, stop in zip(ids, bounds[:-1], bounds[1:]):
        path = folder / f"{sid}.{movie_format}"
        shape = (int(stop - start), *valid.shape)
        if movie_format == "npy":
            movie = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=shape)
            for a in range(int(start), int(stop), _WRITE_FRAMES):
                b = min(a + _WRITE_FRAMES, int(stop))
                movie[a - start : b - start] = np.where(valid, store.read(a, b), 0).astype(np.float32)
            movie.flush()
            del movie
        else:
            with tifffile.TiffWriter(path, bigtiff=True) as tif:
                for a in range(int(start), int(stop), _WRITE_FRAMES):
                    b = min(a + _WRITE_FRAMES, int(stop))
                    for frame in np.where(valid, store.read(a, b), 0).astype(np.float32):
                        tif.write(frame, contiguous=True)
        names.append(path.name)
    return names


def main(argv: list[str] | None = None) -> None:
    """``python -m caliali.aligned --input IN --config CFG --output OUT``; errors as one line."""
    from caliali.chunking import print_progress
    from caliali.cli import _fail

    parser = argparse.ArgumentParser(prog="python -m caliali.aligned", description=__doc__.splitlines()[0])
    parser.add_argument("--input", required=True, help="experiment: folder of session videos, manifest, or video")
    parser.add_argument("--output", required=True, help="folder for aligned/, alignment/ and summary.json")
    parser.add_argument("--config", help="YAML/JSON parameters: caliali's, plus movie_format (tif or npy)")
    args = parser.parse_args(argv)
    try:
        mapping = _read_config(args.config)
        movie_format = str(mapping.pop("movie_format", "tif"))
        summary = align(args.input, args.output, config=mapping, movie_format=movie_format, progress=print_progress)
    except CalialiError as exc:
        _fail(str(exc), exc.exit_code)
    print(f"done: {len(summary['sessions'])} session(s) -> {Path(args.output) / 'aligned'}", flush=True)


def _read_config(path: str | None) -> dict[str, Any]:
    if path is None:
        return {}
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise InputError(f"cannot read config {path}: {exc}") from None
    if not isinstance(data, dict):
        raise InputError(f"config {path} must be a mapping of option: value")
    return data


if __name__ == "__main__":
    main(sys.argv[1:])
