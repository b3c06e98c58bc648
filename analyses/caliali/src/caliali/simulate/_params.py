"""Simulation parameters, validated at the edge."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from caliali.exceptions import InputError

__all__ = ["SimulationParams", "VARIANTS", "VIDEO_FORMATS"]

# Neurons per variant when --neurons is not given.
VARIANTS = {"ideal": 100, "remap": 100, "sparse": 20, "dense": 300}
VIDEO_FORMATS = ("tif", "avi")


@dataclass(frozen=True)
class SimulationParams:
    """Every knob of the simulator; defaults follow CaliAli's own simulation.

    The video is ``height`` x ``width`` (default 180 x 260), cropped from a
    field ``margin`` px larger on each side (220 x 300) after warping, so
    that no session shows warped-in borders.
    """

    sessions: int = 3
    frames: int = 1000
    neurons: int | None = None
    seed: int = 0
    variant: str = "ideal"
    within_motion: bool = False
    max_frames_per_file: int | None = None
    pnr: float = 2.0
    format: str = "tif"
    height: int = 180
    width: int = 260
    margin: int = 20
    fs: float = 10.0
    gSig: float = 3.0
    footprint_width: float = 7.0
    min_distance: float = 8.0
    central_fraction: float = 0.6
    halo_sigma: float = 10.0
    spike_rate: float = 0.007
    spike_rate_log_sigma: float = 0.5
    tau_rise: float = 1.25
    tau_decay: float = 5.8
    deform_px: float = 3.0
    translation_px: float = 5.0
    motion_px: float = 1.5
    active_fraction: float = 0.6
    video_scale: float = 1000.0
    video_offset: float = 1.0

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise InputError(f"variant {self.variant!r} is not one of {', '.join(VARIANTS)}")
        if self.format not in VIDEO_FORMATS:
            raise InputError(f"format {self.format!r} is not one of {', '.join(VIDEO_FORMATS)}")
        positive = {
            "sessions": self.sessions,
            "frames": self.frames,
            "height": self.height,
            "width": self.width,
            "pnr": self.pnr,
            "fs": self.fs,
        }
        if self.neurons is not None:
            positive["neurons"] = self.neurons
        if self.max_frames_per_file is not None:
            positive["max_frames_per_file"] = self.max_frames_per_file
        for name, value in positive.items():
            if not value > 0:
                raise InputError(f"{name} must be positive, got {value!r}")
        if min(self.height, self.width) < 32:
            raise InputError(f"height and width must be at least 32 px, got {self.height}x{self.width}")
        if self.margin <= self.translation_px + self.deform_px + 3 * self.motion_px:
            raise InputError("margin must exceed translation_px + deform_px + 3 * motion_px so no border shows")
        if not 0 < self.active_fraction <= 1:
            raise InputError(f"active_fraction must be in (0, 1], got {self.active_fraction!r}")

    @property
    def n_neurons(self) -> int:
        return int(self.neurons) if self.neurons is not None else VARIANTS[self.variant]

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "neurons": self.n_neurons}
