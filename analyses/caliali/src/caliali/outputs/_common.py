"""Helpers shared by the writers."""

from __future__ import annotations

from caliali.exceptions import InputError

__all__ = ["convergence_of", "convergence_sentence", "session_names"]


def convergence_of(extraction) -> dict:
    """The extraction's convergence record (``Extraction.convergence``); empty when it has none."""
    return dict(getattr(extraction, "convergence", None) or {})


def convergence_sentence(extraction) -> str:
    """How the extraction's rounds ended, in one sentence (the record's ``why``)."""
    return str(convergence_of(extraction).get("why") or "convergence not recorded")


def session_names(extraction, session_ids=None) -> list[str]:
    """One name per session: ``session_ids`` checked against the sessions, or ses01, ses02, ..."""
    n_sessions = len(extraction.session_bounds) - 1
    if session_ids is None:
        return [f"ses{i + 1:02d}" for i in range(n_sessions)]
    ids = [str(s) for s in session_ids]
    if len(ids) != n_sessions:
        raise InputError(f"{len(ids)} session ids given for {n_sessions} sessions; give one id per session")
    return ids
