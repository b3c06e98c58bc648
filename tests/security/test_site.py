"""The attack suite's own site: two groups, each answered, a caller without a token refused."""

from __future__ import annotations


def test_each_group_is_answered_and_anonymous_callers_are_refused(site):
    for group in ("lab", "other"):
        with site.http(group) as http:
            assert http.get("/api/jobs").status_code == 200
    with site.http(None) as anonymous:
        assert anonymous.get("/api/jobs").status_code == 401
