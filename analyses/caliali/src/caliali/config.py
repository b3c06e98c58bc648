"""The parameters of a caliali run: one flat, validated model.

Every parameter of the pipeline has a default from the method (Vergara et al.
2025), a range and a description a scientist can act on. The model is the
single source of truth: the blueprint's ``config_schema`` and
``default_config`` are generated from it (``python -m caliali.config``), and a
test checks that the committed blueprint matches.

A config file is YAML or JSON holding any subset of the fields; unknown keys
are refused (a typo must not silently fall back to a default).
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from caliali.exceptions import InputError

__all__ = ["CalialiConfig", "ConfigError", "config_mapping", "config_schema", "load_config"]


class ConfigError(InputError):
    """A config file is unreadable or a value is not allowed."""


# An ISO 8601 duration: P, then years to days, then T and hours to seconds; at least one number.
_ISO_DURATION = re.compile(r"^P(?!$)(\d+Y)?(\d+M)?(\d+W)?(\d+D)?(T(?=\d)(\d+H)?(\d+M)?(\d+(\.\d+)?S)?)?$")
_BUDGET_PATTERN = r"^\s*(auto|\d+(\.\d*)?\s*([kKmMgGtT]i?[bB]?|[bB])?)\s*$"


class CalialiConfig(BaseModel):
    """Parameters of ``caliali run`` (defaults from the method)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # -- data ----------------------------------------------------------------
    fs: Annotated[float, Field(gt=0, le=1000)] | Literal["auto"] = Field(
        "auto",
        description="Frame rate of the recording, Hz; 'auto' reads it from the files (AVI/MP4 frame rate, NWB rate, "
        "ImageJ or OME-TIFF frame interval), else 10 Hz, the value used and its source reported in summary.json.",
    )
    dataset: str = Field(
        "", description="Path of the movie inside HDF5, zarr or NWB files (e.g. /mov); empty for other formats."
    )
    session_start_time: str = Field(
        "",
        pattern=r"^(\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?)?$",
        description="When the first session was recorded (ISO 8601; UTC when no offset is given), written as the "
        "NWB session_start_time when the recording's own metadata does not say it. Empty: the recording's time, "
        "else 1970-01-01T00:00:00Z; never the time of the run, so that runs of the same data give the same file.",
    )
    crop: list[Annotated[int, Field(ge=0, le=100_000)]] = Field(
        [],
        max_length=4,
        description="Rectangle of the frame to analyse, [top, bottom, left, right] in pixels of the original movie "
        "(bottom and right excluded, as Python slices); applied as frames are read, the same in every session. "
        "Empty: the whole frame.",
    )
    roi_mask: str = Field(
        "",
        description="File name, inside the input folder, of a mask image the size of the (cropped) frame: .npy "
        "(boolean or 0/1) or PNG/TIFF (nonzero inside). Seeds outside are ignored and footprints stay inside. "
        "Empty: no mask.",
    )
    # -- resources -----------------------------------------------------------
    memory_budget: str = Field(
        "1GB",
        pattern=_BUDGET_PATTERN,
        description="Memory the analysis may use for frames in flight, e.g. '1GB', '512MiB', or 'auto' "
        "(half the available memory). Sets how many frames are read at once; peak memory does "
        "not grow with the length or number of sessions.",
    )
    batch_frames: int = Field(0, ge=0, le=100_000, description="Frames per chunk; 0 derives it from memory_budget.")
    # -- downsampling and neuron size ------------------------------------------
    spatial_ds: int = Field(1, ge=1, le=8, description="Spatial downsampling factor (area averaging).")
    temporal_ds: int = Field(1, ge=1, le=10, description="Temporal downsampling factor (frame averaging).")
    gSig: Annotated[float, Field(gt=0.5, le=50)] | Literal["auto"] = Field(
        "auto",
        description="Neuron radius in pixels of the original movie (divided by spatial_ds internally): the radius "
        "where a footprint falls to 0.2 of its peak. 'auto' estimates it from the first 1,000 frames of the first "
        "session (the median size of the cells that stand out in them), reported in summary.json as gSig and "
        "gSig_from.",
    )
    # -- motion correction -----------------------------------------------------
    motion_correction: bool = Field(True, description="Correct rigid motion within each session.")
    max_shift: float = Field(20.0, ge=0, le=200, description="Largest motion within a session, px (original).")
    # -- alignment between sessions ----------------------------------------------
    alignment: bool = Field(True, description="Align sessions to each other (skipped with one session).")
    alignment_source: Literal["auto", "bv", "neuron"] = Field(
        "auto", description="Images to align on: blood vessels (bv), neurons, or auto (bv when reliable)."
    )
    reliability_threshold: float = Field(
        2.7, ge=0, le=20, description="Blood-vessel reliability score below which neuron images are used."
    )
    max_translation: float = Field(
        0.0, ge=0, le=500, description="Largest plausible translation between sessions, px (original); 0 for no limit."
    )
    # -- CNMF-E ------------------------------------------------------------------
    min_corr: float = Field(0.1, ge=0, le=1, description="Seeds need local correlation Cn at least this.")
    min_pnr: Annotated[float, Field(ge=0, le=100)] | Literal["auto"] = Field(
        "auto",
        description="Seeds need peak-to-noise ratio PNR at least this; 'auto' chooses it from the recording: "
        "2 robust standard deviations above the median of its PNR image (most pixels are not a neuron's centre), "
        "reported in summary.json.",
    )
    merge_thr: float = Field(
        0.65, ge=0, le=1, description="Overlapping components whose traces correlate above this are merged."
    )
    max_iter: int = Field(20, ge=1, le=50, description="Most rounds of background/spatial/temporal updates.")
    tol: float = Field(0.05, gt=0, le=1, description="Stop when footprints change less than this fraction.")
    bg_ssub: int = Field(2, ge=1, le=8, description="Spatial downsampling of the ring background model.")
    ring_factor: float = Field(1.5, ge=0.5, le=4, description="Ring radius of the background, in neuron diameters.")
    patch_size: int = Field(64, ge=16, le=1024, description="Spatial patch size of the initialisation, px.")
    patch_overlap: int = Field(32, ge=0, le=512, description="Overlap of neighbouring patches, px.")
    min_snr: Annotated[float, Field(ge=0, le=100)] | Literal["auto"] = Field(
        "auto",
        description="Components whose strongest calcium event, a run of two decay times, stays below this many "
        "noise standard deviations are removed; 'auto' (default): 3, or lower where the traces' noise stays further "
        "below it: the level a run expects 0.05 components fitted to noise to pass, from how far the first round's "
        "traces dip below their baselines (calcium only rises); the level used is reported in summary.json.",
    )
    residual_seeds: bool = Field(
        True,
        description="After the second round, also seed neurons in the residual next to the components found "
        "(CNMF-E's pick from the residual): more dim neurons beside bright ones, for about a third more "
        "extraction time; false skips it.",
    )
    # -- outputs -----------------------------------------------------------------
    nwb: bool = Field(True, description="Write an NWB file (neurons.nwb).")
    caiman_hdf5: bool = Field(
        True, description="Write the result in CaImAn's HDF5 layout (caiman.hdf5), readable by caiman's load_CNMF."
    )
    dff_window: float = Field(
        30.0,
        gt=0,
        le=3600,
        description="Window of the running baseline of the dF/F traces (arrays/dff.npy, NWB DfOverF), seconds.",
    )
    dark_level: float = Field(
        0.0,
        ge=0,
        le=1e9,
        description="What a pixel of the recording reads with no light (the camera's black level or offset), in "
        "the recording's units: taken out of each neuron's resting fluorescence, the denominator of dF/F. 0: none.",
    )
    # -- NWB metadata (what DANDI asks of a file; nwbinspector checks it) ---------
    session_description: str = Field(
        "one-photon calcium imaging, neurons extracted by caliali (CNMF-E across sessions)",
        min_length=1,
        description="NWB session_description: what was recorded and done, in a sentence.",
    )
    experiment_description: str = Field("", description="NWB experiment_description; empty to leave it out.")
    experimenter: list[Annotated[str, Field(pattern=r"^[^,]+, [^,]+$")]] = Field(
        [],
        description="Who recorded the data, each as 'Last, First' (e.g. ['Curie, Marie']); empty to leave it out.",
    )
    institution: str = Field("", description="NWB institution (e.g. 'University of Oxford'); empty to leave it out.")
    lab: str = Field("", description="NWB lab; empty to leave it out.")
    keywords: list[str] = Field(
        [], description="NWB keywords (e.g. ['hippocampus', 'place cells']); empty to leave them out."
    )
    subject_id: str = Field(
        "",
        description="The animal's id (NWB Subject.subject_id). DANDI requires it: empty writes no id and "
        "nwbinspector's DANDI check reports it.",
    )
    species: str = Field(
        "Mus musculus",
        pattern=r"^([A-Z][a-z]+ [a-z]+( [a-z]+)?|http://purl\.obolibrary\.org/obo/NCBITaxon_\d+)$",
        description="The animal's species as a Latin binomial (e.g. 'Mus musculus', 'Rattus norvegicus') or an "
        "NCBI taxonomy URL.",
    )
    subject_sex: Literal["M", "F", "U", "O"] = Field(
        "U", description="The animal's sex: M, F, U (unknown) or O (other)."
    )
    subject_age: str = Field(
        "",
        pattern=r"^(P[0-9YMWDTHS]+(/(P[0-9YMWDTHS]+)?)?)?$",
        description="The animal's age at the session as an ISO 8601 duration (e.g. 'P90D'; a range as 'P90D/P120D'). "
        "DANDI requires it: empty writes no age and nwbinspector's DANDI check reports it.",
    )
    indicator: str = Field("unknown", min_length=1, description="Calcium indicator (e.g. 'GCaMP6f').")
    imaging_location: str = Field(
        "unknown", min_length=1, description="Brain region imaged (e.g. 'CA1'; NWB ImagingPlane.location)."
    )
    excitation_lambda: float = Field(
        0.0, ge=0, le=2000, description="Excitation wavelength, nm (e.g. 470); 0 when unknown (NaN in the NWB file)."
    )
    emission_lambda: float = Field(
        0.0, ge=0, le=2000, description="Emission wavelength, nm (e.g. 520); 0 when unknown (NaN in the NWB file)."
    )
    qc: bool = Field(True, description="Write QC figures (qc/*.png).")
    keep_intermediates: bool = Field(
        False, description="Keep the corrected and aligned videos (work/) after a successful run."
    )

    @field_validator("crop")
    @classmethod
    def _a_rectangle(cls, value: list[int]) -> list[int]:
        if value:
            if len(value) != 4:
                raise ValueError(f"crop {value} needs 4 numbers [top, bottom, left, right], or [] for the whole frame")
            top, bottom, left, right = value
            if top >= bottom or left >= right:
                raise ValueError(
                    f"crop {value} is empty: top must be below bottom and left below right "
                    "([top, bottom, left, right], bottom and right excluded)"
                )
        return value

    @field_validator("roi_mask")
    @classmethod
    def _inside_the_input(cls, value: str) -> str:
        if value:
            parts = value.replace("\\", "/").split("/")
            if Path(value).is_absolute() or value.startswith(("/", "\\")) or ".." in parts:
                raise ValueError(
                    f"roi_mask {value!r} must name a file inside the input folder (e.g. mask.png), "
                    "not an absolute path or one leaving the folder with '..'"
                )
        return value

    @field_validator("session_start_time")
    @classmethod
    def _a_real_time(cls, value: str) -> str:
        if value:
            _start_time(value)  # 2024-13-01 matches the pattern but is no date
        return value

    @field_validator("subject_age")
    @classmethod
    def _an_iso_duration(cls, value: str) -> str:
        if value and not all(_ISO_DURATION.match(part) for part in value.split("/") if part or "/" not in value):
            raise ValueError(
                f"{value!r} is not an ISO 8601 duration; write e.g. P90D, P12W, P1Y2M, or a range P90D/P120D"
            )
        return value

    @property
    def start_time(self) -> datetime | None:
        """``session_start_time`` as a time with its offset (UTC when none was given); None when unset."""
        return _start_time(self.session_start_time) if self.session_start_time else None

    # What the stages are given: sizes at the downsampled resolution, 0 as "not set".
    @property
    def gsig_ds(self) -> float:
        """Neuron radius at the downsampled resolution (``gSig`` must be a number: 'auto' resolved first)."""
        if self.gSig == "auto":
            raise ConfigError("gSig is 'auto': estimate it first (caliali.pipeline resolves it at the start of a run)")
        return self.gSig / self.spatial_ds

    @property
    def fs_ds(self) -> float:
        """Frame rate after temporal downsampling, Hz; ``fs`` must be resolved first (see `with_fs`)."""
        if self.fs == "auto":
            raise ValueError("fs is 'auto': resolve it from the recording (caliali.framerate) before using fs_ds")
        return self.fs / self.temporal_ds

    def with_fs(self, fs: float) -> CalialiConfig:
        """This config with ``fs`` set to the rate a run uses (``auto`` resolved from the recording)."""
        return self.model_copy(update={"fs": float(fs)})

    @property
    def crop_box(self) -> tuple[int, int, int, int] | None:
        """``crop`` as (top, bottom, left, right), or None for the whole frame."""
        return (self.crop[0], self.crop[1], self.crop[2], self.crop[3]) if self.crop else None

    @property
    def max_shift_ds(self) -> float:
        """Largest motion within a session at the downsampled resolution, px."""
        return self.max_shift / self.spatial_ds

    @property
    def max_translation_ds(self) -> float | None:
        """Largest translation between sessions at the downsampled resolution, px; None for no limit."""
        return self.max_translation / self.spatial_ds if self.max_translation else None

    @property
    def chunk_frames(self) -> int | None:
        """Frames per chunk, or None to derive it from ``memory_budget``."""
        return self.batch_frames or None


def _alternative(schema: dict[str, Any]) -> str:
    """One branch of a field that takes either a number or a word, in words."""
    if "const" in schema:
        return repr(schema["const"])
    words = {
        "exclusiveMinimum": "greater than",
        "minimum": "greater than or equal to",
        "exclusiveMaximum": "less than",
        "maximum": "at most",
    }
    bounds = [f"{words[key]} {schema[key]:g}" for key in words if key in schema]
    return f"a {schema.get('type', 'value')}" + (f" {' and '.join(bounds)}" if bounds else "")


def _describe(error: dict[str, Any]) -> str:
    where = ".".join(str(p) for p in error["loc"]) or "(config)"
    if error["type"] == "extra_forbidden":
        known = ", ".join(sorted(CalialiConfig.model_fields))
        return f"{where}: unknown parameter; known parameters are: {known}"
    if error["type"] == "value_error":  # our own validators' words say the value already
        return f"{where}: {error['msg'].removeprefix('Value error, ')}"
    value = error.get("input")
    if error["type"] == "string_pattern_mismatch" and error["loc"]:  # a regular expression tells a scientist little
        field = CalialiConfig.model_fields.get(str(error["loc"][0]))
        if field is not None and field.description:
            return f"{where}: {value!r} is not of the form asked: {field.description}"
    return f"{where}: {error['msg']} (got {value!r})"


def load_config(source: str | Path | dict[str, Any] | None) -> CalialiConfig:
    """Read and validate a config (a YAML/JSON file, a mapping, or None for the defaults).

    Raises
    ------
    ConfigError
        Unreadable file, or values out of range; the message names every
        offending field and what is allowed.
    """
    raw = _read(source)
    try:
        return CalialiConfig(**raw)
    except ValidationError as exc:
        fields = config_schema()["properties"]
        problems, seen = [], set()
        for error in exc.errors():
            name = error["loc"][0] if error["loc"] else None
            either = fields.get(name, {}).get("anyOf") if isinstance(name, str) else None
            if either and len(error["loc"]) > 1:  # pydantic says why each branch failed: say once what is allowed
                if name not in seen:
                    seen.add(name)
                    allowed = ", or ".join(_alternative(branch) for branch in either)
                    problems.append(f"{name}: must be {allowed} (got {error.get('input')!r})")
                continue
            problems.append(_describe(error))
        raise ConfigError(f"invalid config: {'; '.join(problems)}") from exc


def config_mapping(source: CalialiConfig | str | Path | dict[str, Any] | None) -> dict[str, Any]:
    """Every parameter with its value as given (defaults filled in): what ncaas hashes as a job's config.

    Values keep the form the file gives them (``fs: 25`` stays an integer), so a config file
    hashes here as the platform hashes the same file merged over the blueprint's defaults.
    """
    if isinstance(source, CalialiConfig):
        return source.model_dump()
    return {**default_config(), **_read(source)}


def _read(source: str | Path | dict[str, Any] | None) -> dict[str, Any]:
    """The mapping a config source holds, unvalidated."""
    if source is None:
        return {}
    if isinstance(source, dict):
        raw: Any = source
    elif str(source).lstrip().startswith("{") and not Path(source).exists():
        # the parameters written out on the command line (--config '{"gSig": 3}'): JSON is YAML too
        try:
            raw = yaml.safe_load(str(source))
        except yaml.YAMLError as exc:
            raise ConfigError(f"--config {str(source)!r}: not a valid JSON or YAML mapping ({exc})") from exc
    else:
        path = Path(source)
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read the config file ({exc.strerror or exc})") from exc
        try:
            raw = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        except (json.JSONDecodeError, yaml.YAMLError) as exc:
            raise ConfigError(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'} ({exc})") from exc
        raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise ConfigError(f"the config must be a mapping of parameter names to values, got {type(raw).__name__}")
    return raw


def _start_time(value: str) -> datetime:
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{value!r} is not a date and time; write e.g. 2024-05-01T09:30:00+02:00") from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def config_schema() -> dict[str, Any]:
    """JSON Schema of the config, as the platform's blueprint carries it."""
    schema = CalialiConfig.model_json_schema()
    schema.pop("title", None)
    schema.pop("description", None)
    for prop in schema["properties"].values():
        prop.pop("title", None)
    schema["additionalProperties"] = False
    return schema


def default_config() -> dict[str, Any]:
    """Every parameter with its default value."""
    return CalialiConfig().model_dump()


if __name__ == "__main__":  # pragma: no cover - a maintenance helper
    print(yaml.safe_dump({"config_schema": config_schema(), "default_config": default_config()}, sort_keys=False))
