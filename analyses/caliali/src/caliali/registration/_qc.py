"""Quality control of an inter-session alignment: numbers and pictures."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np

from caliali.figures import save_png
from caliali.registration._fields import warp_replicate
from caliali.registration._reliability import group_consistency

__all__ = ["crispness", "qc_metrics", "write_qc_figures"]

STAGES = ("before", "translation", "nonrigid")


def crispness(image: np.ndarray, mask: np.ndarray) -> float:
    """Root-mean-square gradient magnitude of an image inside ``mask``.

    The Frobenius norm of the gradient of the mean image [1]_, per pixel:
    sessions that superimpose well give a sharper mean image with larger
    gradients. Compare values computed on the same (normalised) projections.

    References
    ----------
    .. [1] Pnevmatikakis EA, Giovannucci A. NoRMCorre: an online algorithm for
       piecewise rigid motion correction of calcium imaging data. J Neurosci
       Methods 291:83-94, 2017.
    """
    gy, gx = np.gradient(image.astype(np.float64))
    return float(np.sqrt((gy**2 + gx**2)[mask].mean())) if mask.any() else 0.0


def _mean_corr(images: list[np.ndarray], mask: np.ndarray) -> list[float]:
    mean = np.mean([im[mask] for im in images], axis=0)
    out = []
    for im in images:
        x = im[mask] - im[mask].mean()
        y = mean - mean.mean()
        den = float(np.sqrt((x * x).sum() * (y * y).sum()))
        out.append(float((x * y).sum() / den) if den > 0 else 0.0)
    return out


def stage_images(images: list[np.ndarray], translations: np.ndarray, fields: np.ndarray) -> dict[str, list[np.ndarray]]:
    """The projections before alignment, after translation, after non-rigid."""
    shape = images[0].shape
    const = [np.broadcast_to(np.asarray(t, np.float32).reshape(2, 1, 1), (2, *shape)) for t in translations]
    return {
        "before": list(images),
        "translation": [warp_replicate(im, c) for im, c in zip(images, const, strict=True)],
        "nonrigid": [warp_replicate(im, f + c) for im, f, c in zip(images, fields, const, strict=True)],
    }


def qc_metrics(
    images: list[np.ndarray], translations: np.ndarray, fields: np.ndarray, mask: np.ndarray, *, gSig: float
) -> dict:
    """Per-session correlation with the mean image and crispness of the mean
    image at each stage; 95th percentile non-rigid displacement as a
    percentage of the neuron diameter (``2 * gSig``)."""
    stages = stage_images(images, translations, fields)
    mag = np.sqrt((fields.astype(np.float64) ** 2).sum(axis=1))
    p95 = [float(np.percentile(m[mask], 95)) if mask.any() else 0.0 for m in mag]
    out: dict = {"corr_with_mean": {}, "crispness": {}, "group_consistency": {}}
    for name, imgs in stages.items():
        out["corr_with_mean"][name] = _mean_corr(imgs, mask)
        out["crispness"][name] = crispness(np.mean(imgs, axis=0), mask)
        out["group_consistency"][name] = group_consistency(imgs, mask).tolist() if len(imgs) > 1 else [1.0]
    out["displacement_p95_px"] = p95
    out["displacement_p95_pct_neuron"] = [100.0 * p / (2.0 * gSig) for p in p95]
    out["valid_fraction"] = float(mask.mean())
    return out


def _heldout_panel(ax, heldout: dict | None) -> None:
    """Bars of each session's held-out score with translation only and with
    its non-rigid field; the kept candidate is drawn solid, the other hatched."""
    ax.set_title("held-out score (fit on the other half)", fontsize=8)
    rows = [] if heldout is None else [r for r in heldout["sessions"] if r["translation"] is not None]
    if not rows:
        why = "one session" if heldout is None else heldout["sessions"][0]["why"]
        ax.text(0.5, 0.5, "not judged:\n" + textwrap.fill(why, 40), ha="center", va="center", fontsize=7)
        ax.set_axis_off()
        return
    x = np.arange(len(rows))
    for k, (key, colour) in enumerate((("translation", "tab:orange"), ("nonrigid", "tab:green"))):
        for i, r in enumerate(rows):
            kept = r["nonrigid_used"] == (key == "nonrigid")
            ax.bar(
                x[i] + (k - 0.5) * 0.4,
                r[key],
                width=0.4,
                color=colour if kept else "none",
                edgecolor=colour,
                hatch=None if kept else "//",
            )
    from matplotlib.patches import Patch

    ax.set_xticks(x, [r["session"] for r in rows], fontsize=7, rotation=45)
    ax.set_ylabel("corr. with the others, held-out blocks", fontsize=7)
    top = max(max(r["translation"], r["nonrigid"]) for r in rows)
    ax.set_ylim(min(0.0, min(min(r["translation"], r["nonrigid"]) for r in rows)), 1.35 * max(top, 1e-3))
    handles = [Patch(color="tab:orange", label="translation"), Patch(color="tab:green", label="non-rigid")]
    ax.legend(handles=handles, fontsize=7, ncols=2, loc="upper center", title="hatched: not used", title_fontsize=7)


def write_qc_figures(
    images: list[np.ndarray],
    translations: np.ndarray,
    fields: np.ndarray,
    mask: np.ndarray,
    qc: dict,
    out_dir: Path,
    *,
    labels: list[str],
) -> list[Path]:
    """PNGs: every session's projection before and after alignment, and the
    mean image and correlations at each stage, and the held-out scores that
    decided which sessions keep their non-rigid field. Returns the written paths."""
    # The object-oriented API renders with Agg and never touches pyplot's
    # global backend state.
    from matplotlib.figure import Figure

    out_dir.mkdir(parents=True, exist_ok=True)
    stages = stage_images(images, translations, fields)
    lo, hi = np.percentile(np.stack(images)[:, mask] if mask.any() else np.stack(images), [1, 99.5])
    written = []
    for name, key in (("projections_before.png", "before"), ("projections_after.png", "nonrigid")):
        n = len(images)
        cols = min(n, 4)
        rows = int(np.ceil(n / cols))
        fig = Figure(figsize=(3 * cols, 2.6 * rows))
        axes = fig.subplots(rows, cols, squeeze=False)
        for ax in axes.ravel():
            ax.set_axis_off()
        for i, (ax, img) in enumerate(zip(axes.ravel(), stages[key], strict=False)):
            ax.imshow(img, cmap="gray", vmin=lo, vmax=hi)
            ax.contour(mask, levels=[0.5], colors="y", linewidths=0.5)
            ax.set_title(f"{labels[i]}  r={qc['corr_with_mean'][key][i]:.2f}", fontsize=8)
        fig.suptitle(f"projections {'before' if key == 'before' else 'after'} alignment")
        fig.tight_layout()
        path = out_dir / name
        save_png(fig, path, dpi=80)
        written.append(path)
    fig = Figure(figsize=(17.5, 3.2))
    axes = fig.subplots(1, 5)
    for ax, key in zip(axes[:3], STAGES, strict=True):
        ax.imshow(np.mean(stages[key], axis=0), cmap="gray", vmin=lo, vmax=hi)
        ax.set_title(f"mean, {key}: crispness {qc['crispness'][key]:.3f}", fontsize=8)
        ax.set_axis_off()
    x = np.arange(len(images))
    for k, key in enumerate(STAGES):
        axes[3].bar(x + (k - 1) * 0.27, qc["corr_with_mean"][key], width=0.27, label=key)
    axes[3].set_xticks(x, labels, fontsize=7, rotation=45)
    axes[3].set_ylabel("corr. with mean")
    axes[3].legend(fontsize=7)
    _heldout_panel(axes[4], qc.get("heldout"))
    fig.tight_layout()
    path = out_dir / "alignment_qc.png"
    save_png(fig, path, dpi=80)
    written.append(path)
    return written
