"""How every QC figure is saved: as a PNG whose bytes depend only on the picture.

matplotlib writes a ``Software`` text chunk naming its version into each PNG (and
other formats get a creation date); the metadata is given here explicitly, so the
same figure gives the same file whichever run drew it, and a matplotlib upgrade
changes a file only if it changes the picture.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["PNG_METADATA", "save_png"]

PNG_METADATA: dict[str, str | None] = {"Software": "caliali"}


def save_png(fig: Any, path: Path | str, **options: Any) -> Path:
    """Save ``fig`` (a matplotlib Figure) as a PNG at ``path`` with `PNG_METADATA`."""
    fig.savefig(path, format="png", metadata=PNG_METADATA, **options)
    return Path(path)
