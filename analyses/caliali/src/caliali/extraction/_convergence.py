"""How extraction's refinement rounds ended, in a record a reader can check at a glance.

The loop (``cnmfe._iterate``) marks the round it stopped at (``stop``: ``"tol"``, ``"noise"``
or ``"stalled"``); a history without that mark ran out of rounds (``max_iter``). A fit has
converged when its footprints changed by less than ``tol`` in the last round, or when the
change stopped falling while, inside the footprints' supports (``interior``: the values, not
edge pixels crossing the threshold that cuts a footprint off), it was within twice their own
standard error (``noise``: what two equally good fits of the same data would differ by). A change
that stops falling with the values still moving by more than that is a fit going round in
circles: it is reported as not converged. The
record says whether the fit converged, why it stopped, and the numbers behind it, in one sentence
(``why``) that summary.json, the run's last status message, the QC figure and the NWB file
repeat.
"""

from __future__ import annotations

from typing import Any

__all__ = ["convergence_record"]


def convergence_record(history: list[dict], *, tol: float, max_iter: int) -> dict[str, Any]:
    """``{"converged", "stop", "rounds", "max_iter", "tol", "change", "why"}`` from the rounds' history."""
    rounds = len(history)
    record: dict[str, Any] = {
        "rounds": rounds,
        "max_iter": int(max_iter),
        "tol": float(tol),
        "change": None,
        "interior": None,
        "noise": None,
    }
    if not history:
        return {**record, "converged": False, "stop": "no_rounds", "why": "no refinement round ran (max_iter 0)"}
    last = history[-1]
    change = float(last["change"])
    record["change"] = change
    noise, interior = last.get("noise"), last.get("interior")
    record["noise"] = None if noise is None else float(noise)
    record["interior"] = None if interior is None else float(interior)
    inside = (
        "" if noise is None or interior is None else f"{interior:.2g} inside the supports, standard error {noise:.2g}"
    )
    after = f"after {rounds} round{'s' if rounds != 1 else ''}"
    stop = last.get("stop")
    if stop == "tol":
        why = f"converged: footprint change {change:.3g} < tol {tol:g} {after}"
    elif stop == "noise":
        why = f"converged: footprint change {change:.3g} stopped falling within the estimates' noise ({inside}) {after}"
    elif stop == "stalled":
        why = (
            f"not converged: footprint change stopped falling at {change:.3g} (tol {tol:g}), the values still "
            f"moving beyond the estimates' noise ({inside}) {after}"
        )
    else:
        stop = "max_iter"
        still = [f"{last[k]} {k}" for k in ("removed", "merged") if last.get(k)]
        compared = f"change {change:.3g} {'>=' if change >= tol else '<'} tol {tol:g}"
        why = f"not converged {after} (max_iter): {compared}" + (
            f", {' and '.join(still)} in the last round" if still else ""
        )
    return {**record, "converged": stop in ("tol", "noise"), "stop": stop, "why": why}
