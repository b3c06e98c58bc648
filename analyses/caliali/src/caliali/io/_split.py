"""Cut a long video into pieces of at most ``max_frames`` frames."""

from __future__ import annotations

from pathlib import Path

from caliali.budget import batch_frames_for
from caliali.exceptions import InputError
from caliali.io._open import open_video
from caliali.io._writers import open_writer

__all__ = ["split_sizes", "split_video"]


def split_sizes(n_frames: int, max_frames: int) -> list[int]:
    """Frame counts of the pieces a video of ``n_frames`` is cut into.

    The fewest pieces that each hold at most ``max_frames``, as equal as
    possible (sizes differ by at most one frame), summing to ``n_frames``:
    nothing is dropped and a short video stays whole. The original CaliAli
    rounding could drop short files and make pieces 1.5x over the limit.

    Examples
    --------
    >>> split_sizes(7000, 3000)
    [2334, 2333, 2333]
    >>> split_sizes(100, 3000)
    [100]
    """
    if int(max_frames) < 1:
        raise InputError(f"max_frames must be at least 1, got {max_frames!r}")
    if int(n_frames) < 0:
        raise InputError(f"n_frames must not be negative, got {n_frames!r}")
    if n_frames == 0:
        return []
    pieces = -(-int(n_frames) // int(max_frames))
    base, extra = divmod(int(n_frames), pieces)
    return [base + 1] * extra + [base] * (pieces - extra)


def _output_suffix(path: Path, dtype_kind: str) -> str:
    """Same format as the input when we can write it losslessly, else TIFF."""
    suffix = path.suffix.lower()
    if suffix in (".tif", ".tiff", ".h5", ".hdf5", ".zarr"):
        return suffix
    if suffix in (".avi", ".mp4", ".mov", ".mkv", ".m4v") and dtype_kind == "u":
        return ".avi"  # FFV1 keeps the decoded frames exactly
    return ".tif"


def split_video(
    path: Path | str,
    out_dir: Path | str,
    *,
    max_frames: int,
    dataset: str | None = None,
    memory_budget: int | str | None = "1GB",
) -> list[Path]:
    """Write ``<name>_b1, <name>_b2, ...`` pieces of at most ``max_frames`` frames.

    Pieces keep the input's format and dtype (TIFF, HDF5, zarr); movies
    read through OpenCV (AVI, MP4, ...) become grey FFV1 AVI, which stores
    the decoded frames exactly; NWB becomes TIFF. Splitting never loses data. Frames stream through
    as many at a time as ``memory_budget`` allows. A video no longer than
    ``max_frames`` gives one piece, ``<name>_b1``.

    Returns
    -------
    list of Path
        The pieces, in time order.
    """
    path, out_dir = Path(path), Path(out_dir)
    pieces: list[Path] = []
    with open_video(path, dataset=dataset) as video:
        suffix = _output_suffix(path, video.dtype.kind)
        batch_frames = batch_frames_for(memory_budget, video.frame_shape, copies=3, max_frames=max_frames)
        start = 0
        for index, size in enumerate(split_sizes(video.n_frames, max_frames), start=1):
            piece = out_dir / f"{path.stem}_b{index}{suffix}"
            if piece.resolve() == path.resolve():
                raise InputError(f"{piece}: splitting would overwrite the input; choose another output folder")
            with open_writer(
                piece, frame_shape=video.frame_shape, dtype=video.dtype, n_frames=size, fps=video.fs or 10.0
            ) as writer:
                for chunk in video.iter_chunks(batch_frames, start=start, stop=start + size):
                    writer.write(chunk)
            pieces.append(piece)
            start += size
    return pieces
