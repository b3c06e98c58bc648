"""How extraction's refinement rounds ended, in a record a reader can check at a glance.

The loop (``cnmfe._iterate``) marks the round it stopped at (``stop``: ``"tol"`` or
``"stalled"``); a history without that mark ran out of rounds (``max_iter``). The record
says whether the fit converged, why it stopped, and the numbers behind it, in one sentence
(``why``) that summary.json, the run's last status message, the QC figure and the NWB file
repeat.
"""

from __future__ import annotations

from typing import Any

__all__ = ["convergence_record"]


def convergence_record(history: list[dict], *, tol: float, max_iter: int) -> dict[str, Any]:
    """``{"converged", "stop", "rounds", "max_iter", "tol", "change", "why"}`` from the rounds' history."""
    rounds = len(history)
    record: dict[str, Any] = {"rounds": rounds, "max_iter": int(max_iter), "tol": float(tol), "change": None}
    if not history:
        return {**record, "converged": False, "stop": "no_rounds", "why": "no refinement round ran (max_iter 0)"}
    last = history[-1]
    change = float(last["change"])
    record["change"] = change
    after = f"after {rounds} round{'s' if rounds != 1 else ''}"
    stop = last.get("stop")
    if stop == "tol":
        why = f"converged: footprint change {change:.3g} < tol {tol:g} {after}"
    elif stop == "stalled":
        why = f"converged: stalled at footprint change {change:.3g} (the estimates' noise floor; tol {tol:g}) {after}"
    else:
        stop = "max_iter"
        still = [f"{last[k]} {k}" for k in ("removed", "merged") if last.get(k)]
        compared = f"change {change:.3g} {'>=' if change >= tol else '<'} tol {tol:g}"
        why = f"not converged {after} (max_iter): {compared}" + (
            f", {' and '.join(still)} in the last round" if still else ""
        )
    return {**record, "converged": stop != "max_iter", "stop": stop, "why": why}
