"""The region of the frame a run analyses: the ``crop`` rectangle and the ``roi_mask`` image.

``crop`` is applied as frames are read (`caliali.io.VideoReader.set_crop`), so every array
of the run -- and the footprints ``A`` written to ``arrays/`` and ``neurons.nwb`` -- is on the
cropped grid, downsampled by ``spatial_ds``: pixel (y, x) of a footprint is pixel
(top + y * spatial_ds, left + x * spatial_ds) of the original movie. ``arrays/meta.json``
records ``crop`` and ``frame_shape_original`` to map them back.

``roi_mask`` names an image inside the input folder, the size of the cropped frame:
``.npy`` (boolean or 0/1) or PNG/TIFF (nonzero = inside). Seeds outside it are ignored and
footprints are confined to it. A name leaving the input folder is refused (the platform
gives a run its input folder alone).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from caliali.exceptions import InputError

__all__ = ["MASK_SUFFIXES", "input_folder", "load_roi_mask", "mask_path", "on_run_grid"]

MASK_SUFFIXES = (".npy", ".png", ".tif", ".tiff")


def input_folder(input: str | Path) -> Path:
    """The folder a run's input lives in: the input itself when it is a folder, else the one holding it."""
    path = Path(input)
    return path if path.is_dir() and path.suffix.lower() != ".zarr" else path.parent


def mask_path(input: str | Path, name: str) -> Path:
    """Where ``roi_mask`` ``name`` is: inside the input folder, or a one-line error saying why not."""
    folder = input_folder(input)
    parts = name.replace("\\", "/").split("/")
    if Path(name).is_absolute() or name.startswith(("/", "\\")) or ".." in parts:
        raise InputError(
            f"roi_mask {name!r} must name a file inside the input folder (e.g. mask.png), "
            "not an absolute path or one leaving the folder with '..'"
        )
    path = folder / name
    try:
        path.resolve().relative_to(folder.resolve())
    except ValueError:
        raise InputError(f"roi_mask {name!r} links outside the input folder; put the mask file itself there") from None
    if not path.is_file():
        raise InputError(f"roi_mask {name!r} is not in the input folder {folder}; put the mask file beside the videos")
    if path.suffix.lower() not in MASK_SUFFIXES:
        raise InputError(f"roi_mask {name!r}: unsupported mask format; give one of {', '.join(MASK_SUFFIXES)}")
    return path


def _read(path: Path) -> np.ndarray:
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            image = np.load(path, allow_pickle=False)
        elif suffix == ".png":
            from caliali._cv2 import cv2

            image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
            if image is None:
                raise ValueError("not a readable PNG image")
        else:
            import tifffile

            image = tifffile.imread(path)
    except Exception as exc:  # numpy, OpenCV and tifffile raise several types for bad files
        raise InputError(f"roi_mask {path.name!r} cannot be read ({exc}); save it again as .npy, PNG or TIFF") from exc
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] in (3, 4):  # a colour picture: inside where any channel is set
        image = image[..., :3].any(axis=-1)
    if image.ndim != 2:
        raise InputError(f"roi_mask {path.name!r} is shaped {image.shape}; give one 2-D image (height, width)")
    if suffix == ".npy" and image.dtype != bool and not np.isin(image, (0, 1)).all():
        raise InputError(
            f"roi_mask {path.name!r} holds values other than 0 and 1; save a boolean or 0/1 array as the mask"
        )
    return image != 0


def load_roi_mask(input: str | Path, name: str, frame_shape: tuple[int, int], crop: list[int]) -> np.ndarray:
    """The ``roi_mask`` named ``name`` as a bool image of ``frame_shape`` (the cropped frame).

    Raises
    ------
    InputError
        The name leaves the input folder, the file is missing, unreadable, the wrong size, or empty.
    """
    path = mask_path(input, name)
    mask = _read(path)
    if mask.shape != tuple(frame_shape):
        h, w = frame_shape
        after = f" after crop {list(crop)}" if crop else ""
        raise InputError(
            f"roi_mask {name!r} is {mask.shape[0]}x{mask.shape[1]} px but the frame is {h}x{w} px{after}; "
            "make the mask the size of the (cropped) frame"
        )
    if not mask.any():
        raise InputError(f"roi_mask {name!r} marks no pixel inside; nonzero (or True) pixels are the region to analyse")
    return mask


def on_run_grid(mask: np.ndarray, spatial_ds: int) -> np.ndarray:
    """``mask`` at the run's resolution: a downsampled pixel is inside when most of its block is."""
    from caliali.motion.downsample import downsample_spatial

    return downsample_spatial(mask.astype(np.float32), spatial_ds) >= 0.5
