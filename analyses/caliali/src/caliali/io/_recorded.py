"""When a recording was made and at what frame rate, as its file says: read from the format's own
metadata, never guessed.

A time given without an offset is taken as UTC (as the config's ``session_start_time``);
a value that is not a date and time is ignored (the caller falls back to the config, then to
a fixed epoch), so a malformed tag never stops a run.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

__all__ = ["ATTRIBUTE_NAMES", "from_attributes", "from_tiff", "parse_time", "rate_from_tiff"]

ATTRIBUTE_NAMES = ("session_start_time", "start_time", "recording_start_time")
"""Attribute names read as the recording's start in HDF5 and zarr files (the array's, then its groups')."""

_OME_DATE = re.compile(r"<(?:\w+:)?AcquisitionDate>\s*([^<]+?)\s*</")
_OME_PIXELS = re.compile(r"<(?:\w+:)?Pixels\b[^>]*>")
_XML_ATTRIBUTE = re.compile(r'(\w+)\s*=\s*"([^"]*)"')
# Seconds per unit of OME's TimeIncrementUnit and of ImageJ's "tunit" (ImageJ writes "sec" by default).
_SECONDS = {"s": 1.0, "sec": 1.0, "second": 1.0, "seconds": 1.0, "ms": 1e-3, "msec": 1e-3, "µs": 1e-6, "us": 1e-6}
_SECONDS.update({"min": 60.0, "h": 3600.0})


def parse_time(value: Any) -> datetime | None:
    """``value`` (ISO 8601 text, bytes, a datetime, or TIFF's ``YYYY:MM:DD HH:MM:SS``) as an aware time."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if hasattr(value, "tolist") and not isinstance(value, str):  # numpy scalars and 1-element arrays
        value = value.tolist()
        value = value[0] if isinstance(value, list) and len(value) == 1 else value
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
    if isinstance(value, datetime):
        when = value
    elif isinstance(value, str):
        text = value.strip()
        try:
            when = datetime.strptime(text, "%Y:%m:%d %H:%M:%S")  # TIFF DateTime
        except ValueError:
            try:
                when = datetime.fromisoformat(text.replace("Z", "+00:00"))
            except ValueError:
                return None
    else:
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def from_attributes(attribute_sets: Iterable[Mapping[str, Any]]) -> datetime | None:
    """The first parsable `ATTRIBUTE_NAMES` value among ``attribute_sets`` (most specific first)."""
    for attrs in attribute_sets:
        for name in ATTRIBUTE_NAMES:
            if name in attrs:
                when = parse_time(attrs[name])
                if when is not None:
                    return when
    return None


def from_tiff(tif: Any) -> datetime | None:
    """An OME-TIFF's ``AcquisitionDate``, else the first page's ``DateTime`` tag (a ``tifffile.TiffFile``)."""
    ome = tif.ome_metadata if tif.is_ome else None
    if ome:
        match = _OME_DATE.search(ome)
        when = parse_time(match.group(1)) if match else None
        if when is not None:
            return when
    tag = tif.pages[0].tags.get("DateTime")
    return parse_time(tag.value) if tag is not None else None


def _positive(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if number > 0 and number == number and number != float("inf") else None


def rate_from_tiff(tif: Any) -> float | None:
    """Frames per second a TIFF records (a ``tifffile.TiffFile``), else None.

    OME-TIFF: the ``TimeIncrement`` of its ``Pixels`` (seconds unless ``TimeIncrementUnit`` says
    otherwise); ImageJ hyperstacks: ``finterval`` (seconds per frame, in ``tunit``), else ``fps``.
    """
    ome = tif.ome_metadata if tif.is_ome else None
    if ome:
        match = _OME_PIXELS.search(ome)
        attributes = dict(_XML_ATTRIBUTE.findall(match.group(0))) if match else {}
        step = _positive(attributes.get("TimeIncrement"))
        unit = _SECONDS.get(attributes.get("TimeIncrementUnit", "s"))
        if step is not None and unit is not None:
            return round(1.0 / (step * unit), 6)
    imagej = tif.imagej_metadata if tif.is_imagej else None
    if imagej:
        step = _positive(imagej.get("finterval"))
        unit = _SECONDS.get(str(imagej.get("tunit", "sec")).strip().lower())
        if step is not None and unit is not None:
            return round(1.0 / (step * unit), 6)
        return _positive(imagej.get("fps"))
    return None
