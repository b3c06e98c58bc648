"""Reviewing a real caliali result in a real browser, end to end (docs/review.md).

A real `ncaas serve` runs caliali on a small simulated two-session experiment. Playwright drives
Debian's Chromium through its review page: a neuron selected by clicking the image and another
from the table, one rejected, two neighbours merged, an accept undone, a second browser seeing
the decisions (and one made after it opened), then "Finish review". The curation job's result
(curation.json, K, the merged neuron's origin) and its certificate's review block are checked,
and `ncaas rerun` of it reproduces it byte for byte. Another group reaches none of it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest

from ncaas.client import Client
from ncaas.server.accounts import Accounts
from ncaas.server.state import default_database_url
from ncaas.testing.servers import ServerProcess

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]
SMALL = {"gSig": 3, "min_corr": 0.2, "min_pnr": 4, "memory_budget": "256MB"}

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
if not Path(CHROMIUM).exists():
    pytest.skip("Debian's chromium is not installed (`make system-deps` does it)", allow_module_level=True)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A server with groups lab (ann, cat) and other (bob), and a finished caliali job of lab."""
    base = tmp_path_factory.mktemp("review")
    done = subprocess.run(
        [sys.executable, "-m", "caliali", "simulate", str(base / "sim"), "--sessions", "2", "--frames", "200",
         "--neurons", "12", "--seed", "3", "--height", "64", "--width", "64"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    root = base / "root"
    root.mkdir()
    experiment = root / "lab" / "inputs" / "exp"
    experiment.mkdir(parents=True)
    for tif in sorted((base / "sim").glob("*.tif")):
        shutil.copy(tif, experiment / tif.name)
    accounts = Accounts.from_url(default_database_url(str(root)))
    for group in ("lab", "other"):
        accounts.add_group(group)
    tokens = {}
    for user, group in (("ann", "lab"), ("cat", "lab"), ("bob", "other")):
        accounts.add_user(user, group)
        tokens[user] = accounts.issue_token(user).token
    accounts.engine.dispose()
    with ServerProcess(root) as server, Client(server.url, tokens["ann"]) as client:
        job = client.wait(client.submit("caliali", ["exp"], config=SMALL)["id"])
        assert job["state"] == "succeeded", (job, client.log(job["id"], "exp")[-3000:])
        yield {"server": server, "root": root, "tokens": tokens, "job": job, "client": client}


def _http(site, user: str) -> httpx.Client:
    return httpx.Client(
        base_url=site["server"].url, headers={"Authorization": f"Bearer {site['tokens'][user]}"}, timeout=120
    )


def _open(browser, site, user: str, url: str, *, via_job: str | None = None):
    """A browser context of ``user`` showing the review page at ``url`` (reached from the job's
    Review link in the main page when ``via_job`` names it); and the errors it logs."""
    context = browser.new_context(viewport={"width": 1300, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(60_000)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if "Content Security Policy" in msg.text else None)
    page.goto(site["server"].url + "/")
    page.evaluate("token => sessionStorage.setItem('ncaas-token', token)", site["tokens"][user])
    if via_job is None:
        page.goto(url)
    else:
        page.goto(site["server"].url + "/")  # signed in from the saved token
        page.click(f"#jobs tr[data-job='{via_job}']")
        link = page.locator(".task[data-dataset='exp'] a.review")
        assert site["server"].url + link.get_attribute("href") == url
        link.click()
    page.wait_for_selector("body[data-ready='1']")
    return context, page, errors


def _at_neuron(page, k: int) -> tuple[float, float]:
    """Where neuron ``k``'s centre is on the screen."""
    y, x = page.evaluate(f"window.reviewState.rows[{k}].center")
    h, w = page.evaluate("window.reviewState.info.dims")
    box = page.locator("#field").bounding_box()
    return box["x"] + (x + 0.5) / w * box["width"], box["y"] + (y + 0.5) / h * box["height"]


def _status(page, k: int) -> str:
    return page.locator(f"#table-body tr[data-neuron='{k}'] td").last.inner_text()


def test_ncaas_review_needs_a_server():
    done = subprocess.run([sys.executable, "-m", "ncaas", "review", "JOB"], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert "the review page is a page of an ncaas server: give --server URL --token TOKEN" in " ".join(
        (done.stdout + done.stderr).split()
    )


def test_a_review_in_the_browser_makes_a_certified_curated_result(site):
    job, server = site["job"], site["server"]
    cli = [sys.executable, "-m", "ncaas", "--server", server.url, "--token", site["tokens"]["ann"]]
    printed = subprocess.run([*cli, "review", job["id"]], capture_output=True, text=True, timeout=120)
    assert printed.returncode == 0, printed.stderr
    url = printed.stdout.strip()
    assert url == f"{server.url}/review?job={job['id']}&dataset=exp"
    with _http(site, "ann") as http:
        table = http.get(f"/api/jobs/{job['id']}/review/exp/neurons").json()
        k_before = len(table)
        assert k_before >= 6
        first = http.get(f"/api/jobs/{job['id']}/review/exp/neurons/1").json()
    pair = sorted([1, first["neighbours"][0]["id"]])  # neuron 1 and its nearest neighbour
    others = [k for k in range(k_before) if k not in pair]
    rejected, accepted, late = others[0], others[1], others[2]

    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        one, page, errors = _open(browser, site, "ann", url, via_job=job["id"])
        assert page.evaluate("document.body.dataset.contours") == str(k_before)  # every neuron outlined
        page.mouse.move(*_at_neuron(page, rejected))  # hovering names the neuron and its SNR
        snr = next(r["snr"] for r in table if r["id"] == rejected)
        page.wait_for_selector(f"#hover:has-text('#{rejected} · SNR {snr}')")
        page.mouse.click(*_at_neuron(page, rejected))  # select by clicking the image
        page.wait_for_selector(f"body[data-shown='{rejected}']")
        assert page.locator("#neuron-title").inner_text().startswith(f"Neuron {rejected}")
        page.keyboard.press("r")
        page.wait_for_selector("body[data-version='1']")
        assert _status(page, rejected) == "rejected"
        page.wait_for_selector(f"body[data-shown='{rejected + 1}']")  # a decision moves on to the next neuron
        page.keyboard.press("k")
        page.wait_for_selector(f"body[data-shown='{rejected}']")
        page.keyboard.press("ArrowDown")
        page.wait_for_selector(f"body[data-shown='{rejected + 1}']")
        page.click("#table-head th[data-key='snr']")  # sorted by SNR, highest first
        best = max(table, key=lambda r: r["snr"])["id"]
        assert page.locator("#table-body tr").first.get_attribute("data-neuron") == str(best)
        page.click("#table-head th[data-key='id']")

        page.click(f"#table-body tr[data-neuron='{pair[0]}']")  # select by the table, then add its neighbour
        page.wait_for_selector(f"body[data-shown='{pair[0]}']")
        page.click(f"#table-body tr[data-neuron='{pair[1]}']", modifiers=["Shift"])
        page.wait_for_selector(f"body[data-selected='{pair[0]},{pair[1]}']")
        page.keyboard.press("m")
        page.wait_for_selector("body[data-version='2']")
        assert _status(page, pair[0]) == _status(page, pair[1]) == "merged"

        page.click(f"#table-body tr[data-neuron='{accepted}']")
        page.wait_for_selector(f"body[data-shown='{accepted}']")
        page.keyboard.press("a")
        page.wait_for_selector("body[data-version='3']")
        assert _status(page, accepted) == "accepted"
        page.keyboard.press("u")  # undo the accept
        page.wait_for_selector("body[data-version='4']")
        assert _status(page, accepted) == "unreviewed"

        two, other, errors2 = _open(browser, site, "cat", url)  # a second reviewer of the group
        assert other.evaluate("document.body.dataset.version") == "4"
        assert _status(other, rejected) == "rejected" and _status(other, pair[1]) == "merged"
        other.click(f"#table-body tr[data-neuron='{late}']")  # the second reviewer decides too
        other.wait_for_selector(f"body[data-shown='{late}']")
        other.keyboard.press("r")
        page.wait_for_selector("body[data-version='5']", timeout=10_000)  # the first sees it by polling
        assert _status(page, late) == "rejected"

        other.click("#finish")  # the second reviewer finishes
        other.wait_for_selector("body[data-curation='succeeded']", timeout=600_000)
        curation_id = other.locator("#curation-link").inner_text()
        one.close()
        two.close()
        browser.close()
    assert not errors and not errors2, errors + errors2

    client = site["client"]
    curated = client.job(curation_id)
    assert curated["state"] == "succeeded" and curated["analysis"] == "caliali"
    root = site["root"]
    out = root / "lab" / "results" / curation_id / "outputs" / "exp"
    curation = json.loads((out / "curation.json").read_text())
    k_after = k_before - 2 - 1  # two rejected, a pair merged into one
    assert len(curation["neurons"]) == k_after
    assert np.load(out / "arrays" / "C_raw.npy").shape[0] == k_after
    merged = [n for n in curation["neurons"] if n["status"] == "merged"]
    assert [n["from"] for n in merged] == [pair]
    assert merged[0]["id"] == pair[0] - sum(r < pair[0] for r in (rejected, late))  # in its lowest id's place
    assert curation["source"]["job"] == job["id"]

    cert = client.certificate(curation_id)
    review = cert["review"]
    original_cert = (root / "lab" / "results" / job["id"] / "certificate.json").read_bytes()
    assert review["job"] == job["id"] and review["dataset"] == "exp"
    assert review["certificate_sha256"] == hashlib.sha256(original_cert).hexdigest()
    decisions_file = root / review["decisions"]["path"]
    decisions = json.loads(decisions_file.read_text())
    assert review["decisions"]["sha256"] == hashlib.sha256(decisions_file.read_bytes()).hexdigest()
    assert review["decisions"]["sha256"] == curation["decisions_sha256"]
    assert decisions["final"] == {"accepted": [], "rejected": sorted([rejected, late]), "merges": [pair]}
    assert [e["action"] for e in decisions["log"]] == ["reject", "merge", "accept", "undo", "reject"]
    assert [r["user"] for r in review["decisions"]["reviewers"]] == ["ann", "cat"]
    assert [r["actions"] for r in review["decisions"]["reviewers"]] == [4, 1]
    assert cert["tasks"][0]["argv"][2:4] == ["caliali", "curate"]

    rerun = subprocess.run([*cli, "rerun", curation_id], capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert " 0 different" in " ".join(rerun.stdout.split()), rerun.stdout[-2000:]
    with _http(site, "ann") as http:  # byte for byte: every output identical, none merely within tolerance
        again = next(j for j in http.get("/api/jobs").json() if client.job(j["id"]).get("rerun_of") == curation_id)
        verdict = http.get(f"/api/jobs/{again['id']}/verdict").json()
    assert verdict["ok"] and {r["verdict"] for r in verdict["rows"]} == {"identical"}, verdict["summary"]
    assert {"exp/curation.json", "exp/arrays/A.npz", "exp/neurons.nwb"} <= {r["path"] for r in verdict["rows"]}
    decisions_file.write_bytes(decisions_file.read_bytes() + b" ")  # the group's storage is the group's to change
    refused = subprocess.run([*cli, "rerun", curation_id], capture_output=True, text=True, timeout=300)
    said = " ".join((refused.stdout + refused.stderr).split())
    assert refused.returncode != 0 and "Traceback" not in said
    assert "cannot rerun the curation on the same result and decisions: the decisions file" in said, said
    assert "changed since the review was finished" in said, said

    # another group reaches none of it: not the page's data, not the decisions, not finish
    with _http(site, "bob") as http:
        base = f"/api/jobs/{job['id']}/review/exp"
        for method, path in (
            ("GET", ""), ("GET", "/neurons"), ("GET", "/contours"), ("GET", "/image.png"), ("GET", "/neurons/0"),
            ("GET", "/neurons/0/footprint.png"), ("GET", "/decisions"), ("POST", "/decisions"), ("POST", "/finish"),
        ):  # fmt: skip
            kwargs = {"json": {"action": "reject", "neurons": [0]}} if path == "/decisions" and method == "POST" else {}
            resp = http.request(method, base + path, **kwargs)
            assert resp.status_code == 404 and "in group 'other'" in resp.json()["error"], (method, path, resp.text)
    with _http(site, "ann") as http:
        assert len(http.get(f"{base}/decisions").json()["log"]) == 5  # bob changed nothing
