"""`make demo` runs python -m ncaas.demo: the full flow must succeed and reproduce."""

import pytest

from ncaas import demo

pytestmark = pytest.mark.timeout(120)


def test_demo_runs_the_full_flow_and_its_rerun_matches(tmp_path, capsys):
    assert demo.main(tmp_path / "demo-data") == 0
    printed = capsys.readouterr().out
    assert "7 identical, 0 equal within tolerance, 0 different" in printed
    assert "certificate.txt" in printed
    [first, _rerun] = sorted((tmp_path / "demo-data" / "demo" / "results").iterdir())
    assert (first / "end.json").exists() and (first / "certificate.txt").exists()
