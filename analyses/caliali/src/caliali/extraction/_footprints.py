"""Sparse spatial footprints stored as small dense images in per-neuron boxes.

Every neuron's image covers the bounding box of its support, so all products
with a batch of frames touch only those boxes: memory and time scale with the
number of neurons, not with the field of view. The boxes follow the cells: each
spatial update searches a dilation of the current support (:meth:`Footprints.grown`)
and keeps the box of what it found, so a footprint grows and shrinks with the cell.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse
from scipy import ndimage

__all__ = ["Footprints", "box_around", "box_intersection", "image_dot"]

Box = tuple[int, int, int, int]

_FRAMES_PER_STEP = 64  # frames per step of add_product: the update of one footprint stays in cache


def box_around(cy: int, cx: int, radius: int, dims: tuple[int, int]) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1) of the square of half-width ``radius`` around (cy, cx), clipped to ``dims``."""
    return (max(0, cy - radius), min(dims[0], cy + radius + 1), max(0, cx - radius), min(dims[1], cx + radius + 1))


def box_intersection(a: Box, b: Box) -> tuple[tuple[slice, slice], tuple[slice, slice]] | None:
    """Slices into an image on box ``a`` and one on box ``b`` covering the boxes' intersection, or None."""
    y0, y1 = max(a[0], b[0]), min(a[1], b[1])
    x0, x1 = max(a[2], b[2]), min(a[3], b[3])
    if y0 >= y1 or x0 >= x1:
        return None
    return (
        (slice(y0 - a[0], y1 - a[0]), slice(x0 - a[2], x1 - a[2])),
        (slice(y0 - b[0], y1 - b[0]), slice(x0 - b[2], x1 - b[2])),
    )


def image_dot(a: np.ndarray, box_a: Box, b: np.ndarray, box_b: Box) -> float:
    """Inner product of two images placed on their boxes of one frame (float64)."""
    ov = box_intersection(box_a, box_b)
    if ov is None:
        return 0.0
    return float((a[ov[0]].astype(np.float64) * b[ov[1]]).sum())


def tight_box(image: np.ndarray, box: Box) -> tuple[np.ndarray, Box]:
    """``image`` (on ``box``) cropped to the bounding box of its nonzero pixels; unchanged when all zero."""
    rows, cols = np.flatnonzero(image.any(axis=1)), np.flatnonzero(image.any(axis=0))
    if rows.size == 0:
        return image, box
    r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    return image[r0:r1, c0:c1], (box[0] + r0, box[0] + r1, box[2] + c0, box[2] + c1)


class Footprints:
    """K footprints on a (h, w) grid; ``images[k]`` covers ``boxes[k]`` = (y0, y1, x0, x1).

    ``spreading[k]`` says whether footprint k may still spread beyond its support at the next
    spatial update (`grown`): true for a new footprint, and after an update that enlarged it.
    """

    def __init__(
        self,
        dims: tuple[int, int],
        boxes: list[tuple[int, int, int, int]],
        images: list[np.ndarray],
        spreading: np.ndarray | None = None,
    ):
        self.dims = (int(dims[0]), int(dims[1]))
        self.boxes = [tuple(int(v) for v in b) for b in boxes]
        self.images = [np.asarray(im, np.float32) for im in images]
        self.spreading = np.ones(len(self.images), bool) if spreading is None else np.asarray(spreading, bool).copy()

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, keep) -> Footprints:
        keep = list(keep)
        return Footprints(
            self.dims, [self.boxes[k] for k in keep], [self.images[k] for k in keep], self.spreading[keep]
        )

    def slices(self, k: int) -> tuple[slice, slice]:
        y0, y1, x0, x1 = self.boxes[k]
        return slice(y0, y1), slice(x0, x1)

    def dense(self, k: int) -> np.ndarray:
        full = np.zeros(self.dims, np.float32)
        full[self.slices(k)] = self.images[k]
        return full

    def centers(self) -> np.ndarray:
        """Intensity-weighted centre (row, col) of every footprint."""
        out = np.zeros((len(self), 2))
        for k, im in enumerate(self.images):
            y0, _, x0, _ = self.boxes[k]
            total = im.sum()
            if total <= 0:
                out[k] = (y0 + im.shape[0] / 2, x0 + im.shape[1] / 2)
                continue
            yy, xx = np.indices(im.shape)
            out[k] = (y0 + (yy * im).sum() / total, x0 + (xx * im).sum() / total)
        return out

    def to_sparse(self) -> scipy.sparse.csc_array:
        """(h*w, K) sparse matrix, pixels in C order."""
        rows, cols, vals = [], [], []
        for k, im in enumerate(self.images):
            y0, y1, x0, x1 = self.boxes[k]
            yy, xx = np.nonzero(im)
            rows.append((yy + y0) * self.dims[1] + xx + x0)
            cols.append(np.full(yy.size, k))
            vals.append(im[yy, xx])
        if not rows:
            return scipy.sparse.csc_array((self.dims[0] * self.dims[1], 0), dtype=np.float32)
        return scipy.sparse.csc_array(
            (np.concatenate(vals).astype(np.float32), (np.concatenate(rows), np.concatenate(cols))),
            shape=(self.dims[0] * self.dims[1], len(self)),
        )

    def normalized(self) -> tuple[Footprints, np.ndarray]:
        """Footprints scaled to unit L2 norm, and the norms they had (0 for empty ones)."""
        norms = np.array([float(np.sqrt((im.astype(np.float64) ** 2).sum())) for im in self.images])
        images = [im / n if n > 0 else im for im, n in zip(self.images, norms)]
        return Footprints(self.dims, self.boxes, images, self.spreading), norms.astype(np.float32)

    def touching(self, grow: int = 1) -> np.ndarray:
        """(K, K) bool: supports overlap or touch (after growing each by ``grow`` px)."""
        from scipy import ndimage

        grown = []
        for im in self.images:
            padded = np.pad(im > 0, grow)
            grown.append(ndimage.binary_dilation(padded, iterations=grow) if grow else padded)
        boxes = [(y0 - grow, y1 + grow, x0 - grow, x1 + grow) for y0, y1, x0, x1 in self.boxes]
        h, w = self.dims[0] + 2 * grow, self.dims[1] + 2 * grow
        rows, cols = [], []
        for k, (g, (y0, _, x0, _)) in enumerate(zip(grown, boxes)):
            yy, xx = np.nonzero(g)
            rows.append((yy + y0 + grow) * w + xx + x0 + grow)
            cols.append(np.full(yy.size, k))
        if not rows:
            return np.zeros((0, 0), bool)
        m = scipy.sparse.csc_array(
            (np.ones(sum(r.size for r in rows), np.float32), (np.concatenate(rows), np.concatenate(cols))),
            shape=(h * w, len(self)),
        )
        return (m.T @ m).toarray() > 0

    def gram(self) -> np.ndarray:
        """A^T A (K, K)."""
        a = self.to_sparse()
        return np.asarray((a.T @ a).toarray(), np.float32)

    def project(self, frames: np.ndarray) -> np.ndarray:
        """A^T Y for frames (t, h, w): (K, t)."""
        out = np.zeros((len(self), frames.shape[0]), np.float32)
        for k, im in enumerate(self.images):
            if im.size:
                out[k] = np.tensordot(frames[(slice(None), *self.slices(k))], im, axes=([1, 2], [0, 1]))
        return out

    def support_boxes(self) -> list[tuple[int, int, int, int] | None]:
        """Per neuron, (y0, y1, x0, x1) of the bounding box of its nonzero pixels in frame coordinates, or None."""
        out = []
        for (y0, _, x0, _), im in zip(self.boxes, self.images):
            rows = np.flatnonzero(im.any(axis=1))
            if rows.size == 0:
                out.append(None)
                continue
            cols = np.flatnonzero(im.any(axis=0))
            out.append((y0 + int(rows[0]), y0 + int(rows[-1]) + 1, x0 + int(cols[0]), x0 + int(cols[-1]) + 1))
        return out

    def add_product(self, frames: np.ndarray, traces: np.ndarray, sign: float = 1.0) -> None:
        """frames += sign * A C in place, C (K, t).

        Only the bounding box of each footprint's nonzero pixels is touched
        (thresholded footprints fill a fraction of their box; adding zeros
        elsewhere changed nothing), a few frames at a time so that the
        update and its product buffer stay in cache: the same result to the
        bit as updating whole boxes, in less CPU time. A sparse A C product
        (scipy.sparse) is no faster than the loop: the update is bound by
        memory traffic (figures in ``benchmarks/README.md``).
        """
        t = frames.shape[0]
        todo = [(k, box) for k, box in enumerate(self.support_boxes()) if box is not None and traces[k].any()]
        if not todo:
            return
        scaled = sign * traces
        crops = []
        for k, (y0, y1, x0, x1) in todo:
            by, bx = self.boxes[k][0], self.boxes[k][2]
            crops.append((k, y0, y1, x0, x1, self.images[k][y0 - by : y1 - by, x0 - bx : x1 - bx]))
        side = max(max(c[2] - c[1], c[4] - c[3]) for c in crops)
        buffer = np.empty((min(t, _FRAMES_PER_STEP), side, side), np.result_type(scaled, np.float32))
        for t0 in range(0, t, _FRAMES_PER_STEP):
            t1 = min(t0 + _FRAMES_PER_STEP, t)
            block = frames[t0:t1]
            for k, y0, y1, x0, x1, image in crops:
                product = buffer[: t1 - t0, : y1 - y0, : x1 - x0]
                np.multiply(scaled[k, t0:t1, None, None], image[None], out=product)
                block[:, y0:y1, x0:x1] += product

    def correlate(self, frames: np.ndarray, traces: np.ndarray, boxes: list[Box] | None = None) -> list[np.ndarray]:
        """Y C^T restricted to each neuron's box (or to ``boxes``): list of (box) images."""
        boxes = self.boxes if boxes is None else boxes
        return [
            np.tensordot(traces[k], frames[:, y0:y1, x0:x1], axes=(0, 0)) for k, (y0, y1, x0, x1) in enumerate(boxes)
        ]

    def confined(self, allowed: np.ndarray | None) -> Footprints:
        """These footprints with every pixel outside ``allowed`` ((h, w) bool) set to 0; None keeps them."""
        if allowed is None:
            return self
        images = [im * allowed[y0:y1, x0:x1] for (y0, y1, x0, x1), im in zip(self.boxes, self.images)]
        return Footprints(self.dims, self.boxes, images, self.spreading)

    def grown(
        self, grow: int, allowed: np.ndarray | None = None
    ) -> tuple[list[Box], list[np.ndarray], list[np.ndarray]]:
        """Each support dilated by ``grow`` px (4-connected steps), clipped to the frame: (boxes, masks, rims).

        Where the spatial update looks for each neuron's pixels: the current
        support and a rim around it, so a footprint can spread to the cell's
        edge over a few rounds but never jump to another cell. ``rims[k]`` is
        the outermost layer of that search (on ``boxes[k]``): a footprint that
        reaches it was stopped by the search, not by the cell's edge. An empty
        footprint keeps its box with an empty mask. ``allowed`` ((h, w) bool)
        keeps every search inside it (a region of interest). A footprint that
        is no longer `spreading` is searched over its support only (and has no
        rim): it can still shrink and its values still move, but its edge no
        longer wanders in and out from round to round.
        """
        step = ndimage.generate_binary_structure(2, 1)
        h, w = self.dims
        boxes, masks, rims = [], [], []
        for k, ((y0, _, x0, _), im) in enumerate(zip(self.boxes, self.images)):
            support = np.pad(im > 0, grow)
            inner = support
            if grow and support.any() and self.spreading[k]:
                inner = ndimage.binary_dilation(support, step, iterations=grow - 1) if grow > 1 else support
                support = ndimage.binary_dilation(inner, step)
            rim = support & ~inner
            oy, ox = y0 - grow, x0 - grow  # frame position of the padded image's corner
            cy0, cx0 = max(0, oy), max(0, ox)
            cy1, cx1 = min(h, oy + support.shape[0]), min(w, ox + support.shape[1])
            crop = (slice(cy0 - oy, cy1 - oy), slice(cx0 - ox, cx1 - ox))
            support, rim = support[crop], rim[crop]
            if allowed is not None:
                support = support & allowed[cy0:cy1, cx0:cx1]
            mask, box = tight_box(support, (cy0, cy1, cx0, cx1))
            ry, rx = box[0] - cy0, box[2] - cx0
            boxes.append(box)
            masks.append(mask)
            rims.append(rim[ry : ry + mask.shape[0], rx : rx + mask.shape[1]] & mask)
        return boxes, masks, rims

    def overlap_neighbours(self, boxes: list[Box] | None = None) -> list[np.ndarray]:
        """For each neuron, the indices of neurons whose boxes (or ``boxes``) intersect its box (itself included)."""
        b = np.array(self.boxes if boxes is None else boxes, dtype=np.int64).reshape(-1, 4)
        out = []
        for k in range(len(self)):
            hit = (b[:, 0] < b[k, 1]) & (b[k, 0] < b[:, 1]) & (b[:, 2] < b[k, 3]) & (b[k, 2] < b[:, 3])
            out.append(np.nonzero(hit)[0])
        return out

    def box_overlap(self, j: int, k: int) -> tuple[tuple[slice, slice], tuple[slice, slice]] | None:
        """Slices into images j and k covering the intersection of their boxes, or None."""
        return box_intersection(self.boxes[j], self.boxes[k])
