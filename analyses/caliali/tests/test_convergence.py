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
        "interior": None,
        "noise": None,
        "why": "converged: footprint change 0.03 < tol 0.05 after 3 rounds",
    }


def test_stopped_falling_within_the_estimates_noise_is_converged():
    history = [_round(i + 1, c, noise=0.02, interior=0.03) for i, c in enumerate([0.6, 0.4, 0.33, 0.32, 0.31])]
    history[-1]["stop"] = "noise"
    record = convergence_record(history, tol=0.05, max_iter=10)
    assert record["converged"] and record["stop"] == "noise" and record["noise"] == 0.02
    assert record["why"] == (
        "converged: footprint change 0.31 stopped falling within the estimates' noise "
        "(0.03 inside the supports, standard error 0.02) after 5 rounds"
    )


def test_stopped_falling_far_above_the_noise_is_not_converged():
    history = [_round(i + 1, c, noise=0.037, interior=0.16) for i, c in enumerate([0.3, 0.34, 0.3, 0.32])]
    history[-1]["stop"] = "stalled"
    record = convergence_record(history, tol=0.05, max_iter=10)
    assert not record["converged"] and record["stop"] == "stalled"
    assert record["why"] == (
        "not converged: footprint change stopped falling at 0.32 (tol 0.05), the values still moving beyond "
        "the estimates' noise (0.16 inside the supports, standard error 0.037) after 4 rounds"
    )


def test_the_loop_stops_by_tol_noise_or_stall_only_in_a_quiet_round():
    from caliali.extraction.cnmfe import _stop

    def rounds(changes, noise, interior=0.03, **last):
        out = [_round(i + 1, c, noise=noise, interior=interior) for i, c in enumerate(changes)]
        out[-1].update(last)
        return out

    assert _stop(rounds([0.4, 0.03], 0.2), 0.05) == "tol"
    assert _stop(rounds([0.4, 0.03], 0.2, merged=1), 0.05) is None  # something still moved
    assert _stop(rounds([0.5, 0.33, 0.32], 0.02), 0.05) == "noise"  # inside 0.03 <= 2 x 0.02: the edge moves
    assert _stop(rounds([0.5, 0.33, 0.32], 0.01), 0.05) == "stalled"  # inside 0.03 > 2 x 0.01
    assert _stop(rounds([0.5, 0.4, 0.3], 0.01), 0.05) is None  # still falling by 25%: go on


def test_out_of_rounds_is_not_converged_and_says_what_was_still_moving():
    history = [_round(i + 1, 0.3, removed=1, merged=2) for i in range(10)]
    record = convergence_record(history, tol=0.05, max_iter=10)
    assert not record["converged"] and record["stop"] == "max_iter"
    assert record["why"] == (
        "not converged after 10 rounds (max_iter): change 0.3 >= tol 0.05, 1 removed and 2 merged in the last round"
    )
    quiet = convergence_record([_round(1, 0.2)], tol=0.05, max_iter=1)
    assert quiet["why"] == "not converged after 1 round (max_iter): change 0.2 >= tol 0.05"


def test_a_change_still_falling_or_after_a_round_that_grew_or_merged_is_not_a_stall():
    from caliali.extraction.cnmfe import _stalled

    def rounds(changes, **per_round):
        out = [_round(i + 1, c) for i, c in enumerate(changes)]
        for i, extra in per_round.items():
            out[int(i[1:])].update(extra)
        return out

    # falling by 9% a round: slowly, but falling (the demo quadrant's rounds 11-12 did this)
    assert not _stalled(rounds([0.3, 0.0758, 0.0688]))
    assert _stalled(rounds([0.3, 0.0758, 0.0740]))  # under 5% below the lowest before: stopped falling
    assert _stalled(rounds([0.3, 0.06, 0.08, 0.07]))  # up and back down, still above the lowest quiet round
    # a round that spread, removed or merged starts the count afresh: the change after it may rise
    assert not _stalled(rounds([0.5, 0.128, 0.146], r1={"spreading": 2}))
    assert not _stalled(rounds([0.5, 0.128, 0.146], r1={"merged": 1}))
    assert _stalled(rounds([0.5, 0.128, 0.146, 0.15], r1={"spreading": 2}))
