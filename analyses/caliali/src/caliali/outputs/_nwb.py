"""NWB output: footprints as a PlaneSegmentation, traces as RoiResponseSeries, sessions as epochs."""

from __future__ import annotations

import hashlib
import uuid
import warnings
from datetime import datetime
from pathlib import Path

import numpy as np

from caliali.config import CalialiConfig
from caliali.provenance import EPOCH

from ._blocks import BLOCK_BYTES
from ._common import convergence_sentence, session_names

__all__ = ["EPOCH", "content_identifier", "write_nwb"]

CHUNK_BYTES = 2**20  # HDF5 chunks of about 1 MiB: whole frames (all neurons) each
# The file format written whatever the HDF5 library's version: readable from HDF5 1.10 on, and
# the same bytes after a library upgrade that would otherwise pick newer object layouts.
LIBVER = ("earliest", "v110")


def _frames_of(traces):
    """(T, K) float32 data for a RoiResponseSeries of ``traces`` (K, T), read a block of frames at a time.

    Returns an hdmf data iterator (`TraceFrames`), so the NWB file is written
    one buffer of whole frames (about `BLOCK_BYTES`) at a time, in HDF5 chunks
    of whole frames of about `CHUNK_BYTES`. It reads back equal to ``traces.T``.
    """
    from ._frames import TraceFrames  # hdmf is imported only when NWB is written

    k, t = (int(n) for n in np.shape(traces))
    if k == 0 or t == 0:
        return np.zeros((t, k), np.float32)
    chunk = min(t, max(1, CHUNK_BYTES // (4 * k)))
    buffer = min(t, chunk * max(1, BLOCK_BYTES // (4 * k * chunk)))
    return TraceFrames(traces, chunk_shape=(chunk, k), buffer_shape=(buffer, k))


def _pixel_masks(extraction, spatial_ds: int = 1):
    """Each neuron's pixel mask [(x, y, weight), ...] on the recording's pixels: a pixel of the
    extraction's grid (``spatial_ds`` x ``spatial_ds`` recording pixels averaged) gives its weight
    to each of the recording pixels it averaged."""
    a = extraction.A.tocsc()
    w = extraction.dims[1]
    f = int(spatial_ds)
    dy, dx = (d.ravel() for d in np.mgrid[:f, :f])
    for k in range(a.shape[1]):
        lo, hi = a.indptr[k], a.indptr[k + 1]
        y, x = np.divmod(a.indices[lo:hi].astype(np.int64), w)
        val = a.data[lo:hi]
        yield [(int(xx * f + ex), int(yy * f + ey), float(v)) for yy, xx, v in zip(y, x, val) for ey, ex in zip(dy, dx)]


def _nm(value: float) -> float:
    """A wavelength for NWB: nm as configured, NaN for 0 (unknown)."""
    return float(value) if value > 0 else float("nan")


def content_identifier(extraction, *, fs: float, session_ids) -> str:
    """An NWB identifier from what the file holds (footprints, session bounds, frame rate, session
    names): the same result gives the same identifier, a different one another. Used when the
    caller gives none (the pipeline gives one from its input and config hashes)."""
    a = extraction.A.tocsc()
    digest = hashlib.sha256()
    for part in (a.shape, np.asarray(extraction.session_bounds, np.int64).tolist(), float(fs), list(session_ids)):
        digest.update(repr(part).encode())
    for array in (a.indptr, a.indices, a.data):
        digest.update(np.ascontiguousarray(array).tobytes())
    return f"caliali-{digest.hexdigest()[:32]}"


def _stable_object_ids(nwb) -> None:
    """Give every object of ``nwb`` an ``object_id`` derived from the file's identifier and the
    object's place in the file, instead of the random UUID hdmf draws for each.

    The same identifier and contents then give the same ids (and bytes); other files keep
    other ids, as NWB asks. hdmf offers no public way to choose an id when an object is
    created, only its private field, which ``object_id`` returns: set here, before anything
    is built. The byte-identity test fails loudly should hdmf rename it.
    """
    namespace = uuid.uuid5(uuid.NAMESPACE_URL, f"nwb:{nwb.identifier}")
    for container in nwb.all_children():
        if not hasattr(container, "_AbstractContainer__object_id"):
            raise RuntimeError(f"hdmf has no object id field on {type(container).__name__}; pin hdmf<7")
        place = "/".join(reversed([c.name for c in (container, *container.get_ancestors())]))
        container._AbstractContainer__object_id = str(uuid.uuid5(namespace, place))


def write_nwb(
    extraction,
    path: Path | str,
    *,
    fs: float = 10.0,
    session_ids=None,
    session_start_time: datetime = EPOCH,
    identifier: str | None = None,
    description: str = "caliali source extraction",
    field_of_view: str = "",
    spatial_ds: int = 1,
    dff=None,
    config: CalialiConfig | None = None,
) -> Path:
    """Write ``extraction`` to an NWB file at ``path``.

    Contents: ``processing/ophys/ImageSegmentation/PlaneSegmentation`` (one
    ROI per neuron, pixel masks (x, y, weight) **on the recording's pixels**:
    with ``spatial_ds`` > 1 each pixel of the extraction's grid is spread over
    the ``spatial_ds`` x ``spatial_ds`` recording pixels it averaged, so masks
    overlay the raw movie; the imaging plane's description says so);
    ``processing/ophys/Fluorescence`` with RoiResponseSeries ``C`` (denoised),
    ``C_raw`` and ``S`` (deconvolved activity) over all frames;
    ``processing/ophys/DfOverF/dff`` (ΔF/F, `caliali.outputs._dff`) when
    ``dff`` (K, T) is given; one epoch per session marking its frames (tag =
    session id; also in each series' description); the Cn and PNR images (on
    the extraction's grid) in ``processing/ophys/SummaryImages``. Trace
    datasets are (T, K) float32, chunked in whole frames and written a buffer
    of frames at a time, so the traces (e.g. memory maps) are never read whole.
    ``field_of_view`` (e.g. the crop of the original frame the footprints' grid
    is) is added to the imaging plane's and the plane segmentation's descriptions.

    The session's description, experimenter, institution, lab, keywords, the
    subject (id, species, sex, age) and the imaging plane's indicator,
    location and wavelengths come from ``config`` (a `caliali.config.CalialiConfig`;
    its defaults when None); empty fields are left out, an unknown wavelength
    (0) is written as NaN. What DANDI requires is checked by ``nwbinspector``.

    The same arguments give the same bytes, whenever and wherever written:
    ``identifier`` (default: `content_identifier`) also seeds every object's
    ``object_id``; ``file_create_date`` is ``session_start_time`` (what the file
    holds does not depend on when it was written; the run's time is in
    ``summary.json``'s ``run`` section); HDF5 stores no object times
    (``track_times=False``) and a fixed file format (`LIBVER`).

    References
    ----------
    Rübel, O. et al. The Neurodata Without Borders ecosystem for neurophysiological
    data science. eLife 11, e78362 (2022).
    """
    import h5py
    from pynwb import NWBHDF5IO, NWBFile
    from pynwb.base import Images
    from pynwb.file import Subject
    from pynwb.image import GrayscaleImage
    from pynwb.ophys import DfOverF, Fluorescence, ImageSegmentation, OpticalChannel, RoiResponseSeries

    cfg = config if config is not None else CalialiConfig()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    bounds = np.asarray(extraction.session_bounds, np.int64)
    ids = session_names(extraction, session_ids)
    optional = {
        "experiment_description": cfg.experiment_description or None,
        "experimenter": list(cfg.experimenter) or None,
        "institution": cfg.institution or None,
        "lab": cfg.lab or None,
        "keywords": list(cfg.keywords) or None,
    }
    nwb = NWBFile(
        session_description=cfg.session_description,
        identifier=identifier or content_identifier(extraction, fs=fs, session_ids=ids),
        session_start_time=session_start_time,
        file_create_date=session_start_time,  # pynwb's default is the clock
        subject=Subject(
            subject_id=cfg.subject_id or None,
            species=cfg.species,
            sex=cfg.subject_sex,
            age=cfg.subject_age or None,
            description="the animal imaged in every session",
        ),
        **{key: value for key, value in optional.items() if value is not None},
    )
    device = nwb.create_device(name="Miniscope", description="one-photon head-mounted microscope")
    channel = OpticalChannel(
        name="channel", description="fluorescence of the calcium indicator", emission_lambda=_nm(cfg.emission_lambda)
    )
    height, width = (int(n) * int(spatial_ds) for n in extraction.dims)
    plane = nwb.create_imaging_plane(
        name="ImagingPlane",
        optical_channel=channel,
        device=device,
        description=f"aligned field of view shared by all sessions; pixel masks on the recording's pixels "
        f"({height} x {width} covered), extraction on a grid downsampled {int(spatial_ds)}x (area averaging): "
        f"its pixel (y, x) is the recording's block from (y*{int(spatial_ds)}, x*{int(spatial_ds)}); "
        "SummaryImages are on that grid" + (f"; {field_of_view}" if field_of_view else ""),
        excitation_lambda=_nm(cfg.excitation_lambda),
        indicator=cfg.indicator,
        location=cfg.imaging_location,
        imaging_rate=float(fs),
    )
    ophys = nwb.create_processing_module(
        name="ophys",
        description=f"caliali CNMF-E across sessions; {convergence_sentence(extraction)}",
    )
    if extraction.n_neurons:  # a PlaneSegmentation without a mask column does not read back: none without neurons
        segmentation = ImageSegmentation()
        ophys.add(segmentation)
        planes = segmentation.create_plane_segmentation(
            name="PlaneSegmentation",
            description="CNMF-E footprints, one identity per neuron across sessions"
            + (f"; {field_of_view}" if field_of_view else ""),
            imaging_plane=plane,
        )
        planes.add_column(name="snr", description="peak of the denoised trace in noise units")
        for mask, snr in zip(_pixel_masks(extraction, spatial_ds), extraction.snr):
            planes.add_roi(pixel_mask=mask, snr=float(snr))
    sessions_text = "; ".join(f"{sid}: frames {int(a)}-{int(b) - 1}" for sid, a, b in zip(ids, bounds[:-1], bounds[1:]))
    fluorescence = Fluorescence(name="Fluorescence")
    ophys.add(fluorescence)
    if extraction.n_neurons:
        rois = planes.create_roi_table_region(region=list(range(extraction.n_neurons)), description="all neurons")
        for name, data, text in (
            ("C", extraction.C, "denoised calcium (AR(2) OASIS)"),
            ("C_raw", extraction.C_raw, "raw traces, detrended per session"),
            ("S", extraction.S, "deconvolved activity"),
        ):
            fluorescence.add_roi_response_series(
                RoiResponseSeries(
                    name=name,
                    data=_frames_of(data),
                    rois=rois,
                    unit="noise std",
                    rate=float(fs),
                    starting_time=0.0,
                    description=f"{text}, in noise units of each session; sessions concatenated: {sessions_text}",
                )
            )
        if dff is not None:
            ophys.add(
                DfOverF(
                    name="DfOverF",
                    roi_response_series=RoiResponseSeries(
                        name="dff",
                        data=_frames_of(dff),
                        rois=rois,
                        unit="n.a.",
                        rate=float(fs),
                        starting_time=0.0,
                        description="dF/F of each session: (F - F_b) / (f0 + F_b), F the raw trace in movie units, "
                        "F_b its running baseline, f0 the background under the footprint plus the baseline "
                        f"removed from the trace (NaN where f0 + F_b is not positive); {sessions_text}",
                    ),
                )
            )
    for sid, a, b in zip(ids, bounds[:-1], bounds[1:]):
        nwb.add_epoch(start_time=float(a) / fs, stop_time=float(b) / fs, tags=[str(sid)])
    ophys.add(
        Images(
            name="SummaryImages",
            description="max-over-sessions neuron images",
            images=[
                GrayscaleImage(name="Cn", data=np.asarray(extraction.cn, np.float32), description="local correlation"),
                GrayscaleImage(
                    name="PNR", data=np.asarray(extraction.pnr, np.float32), description="peak-to-noise ratio"
                ),
            ],
        )
    )
    _stable_object_ids(nwb)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # h5py/hdmf internals, not our API use
        # no HDF5 chunk cache: whole chunks are written once each, and every open dataset's cache
        # (8 MiB by default) would otherwise fill with chunks of traces until the file is closed
        # no object times: h5py >= 3.15 creates groups and datasets without them, the root group as asked
        with (
            h5py.File(path, "w", rdcc_nbytes=0, track_times=False, libver=LIBVER) as file,
            NWBHDF5IO(mode="w", file=file) as io,
        ):
            io.write(nwb)
    return path
