"""The convergence record: whether extraction's rounds converged, and why they stopped, in one sentence."""

from __future__ import annotations

from caliali.extraction._convergence import convergence_record


def _round(i, change, removed=0, merged=0, **extra):
    return {"iteration": i, "neurons": 10, "change": change, "removed": removed, "merged": merged, **extra}


def test_below_tol():
    history = [_round(1, 0.4, removed=2), _round(2, 0.1), _round(3, 0.03, stop="tol")]
    record = convergence_record(history, tol=0.05, max_iter=10)
    assert record == {
        "converged": True,
        "stop": "tol",
        "rounds": 3,
        "max_iter": 10,
        "tol": 0.05,
        "change": 0.03,
        "why": "converged: footprint change 0.03 < tol 0.05 after 3 rounds",
    }


def test_stalled_at_the_noise_floor():
    history = [_round(i + 1, c) for i, c in enumerate([0.6, 0.4, 0.33, 0.32, 0.31])]
    history[-1]["stop"] = "stalled"
    record = convergence_record(history, tol=0.05, max_iter=10)
    assert record["converged"] and record["stop"] == "stalled"
    assert record["why"] == (
        "converged: stalled at footprint change 0.31 (the estimates' noise floor; tol 0.05) after 5 rounds"
    )


def test_out_of_rounds_is_not_converged_and_says_what_was_still_moving():
    history = [_round(i + 1, 0.3, removed=1, merged=2) for i in range(10)]
    record = convergence_record(history, tol=0.05, max_iter=10)
    assert not record["converged"] and record["stop"] == "max_iter"
    assert record["why"] == (
        "not converged after 10 rounds (max_iter): change 0.3 >= tol 0.05, 1 removed and 2 merged in the last round"
    )
    quiet = convergence_record([_round(1, 0.2)], tol=0.05, max_iter=1)
    assert quiet["why"] == "not converged after 1 round (max_iter): change 0.2 >= tol 0.05"
