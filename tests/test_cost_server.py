"""Cost through a real `ncaas serve` on loopback: a priced Save job in the API and `ncaas --server`,
estimates, the group's spend against its budget (never another group's), the TCO figure."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import httpx
import pytest
from ncaas_testutil import ncaas, write_stack

from ncaas.client import Client
from ncaas.server.accounts import Accounts
from ncaas.server.state import default_database_url
from ncaas.testing.servers import ServerProcess

pytestmark = pytest.mark.timeout(180)
CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    base = tmp_path_factory.mktemp("costserver")
    root = base / "root"
    root.mkdir()
    accounts = Accounts.from_url(default_database_url(str(root)))
    accounts.add_group("lab")
    accounts.add_group("other")
    accounts.add_user("ann", "lab")
    accounts.add_user("bob", "other")
    ann, bob = accounts.issue_token("ann").token, accounts.issue_token("bob").token
    accounts.engine.dispose()
    ncaas("budget", "set", "lab", "5", "--root", str(root), check=True)
    server = ServerProcess(root).start()
    client = Client(server.url, ann)
    data = write_stack(base / "a.npy", frames=30)
    name = client.upload_dataset(data, "a.npy", left_out=lambda paths: None)
    job = client.submit("framestats", [name], pricing="save")
    job = client.wait(job["id"])
    site = type("Site", (), {})()
    site.server, site.root, site.client, site.job, site.ann, site.bob, site.data = (
        server,
        root,
        client,
        job,
        ann,
        bob,
        data,
    )
    yield site
    client.close()
    assert server.stop() in (0, -signal.SIGTERM), server.log()
    assert "Traceback" not in server.log(), server.log()


def test_the_api_prices_the_job_and_names_who_ran_it(site):
    job = site.job
    assert job["state"] == "succeeded" and job["pricing"] == "save" and job["user"] == "ann"
    [task] = job["tasks"]
    assert task["cost"]["final"] and task["cost"]["option"] == "save"
    assert job["cost"]["total"] == pytest.approx(task["cost"]["total"]) and task["cost"]["total"] > 0
    cert = site.client.certificate(job["id"])
    assert cert["cost"]["job"]["total"] == pytest.approx(job["cost"]["total"])
    shown = ncaas("--server", site.server.url, "--token", site.ann, "status", job["id"], check=True).stdout
    assert "at the save price" in shown


def test_estimate_spend_and_budget_for_the_callers_group_only(site):
    found = site.client.estimate("framestats", datasets=["a.npy"], sizes=[10_000_000])
    assert found["datasets"] == 2 and found["runs"] == 1 and found["cost"] > 0
    said = ncaas(
        "--server", site.server.url, "--token", site.ann, "submit", "framestats", str(site.data), "--estimate"
    ).stdout
    assert "estimate (standard) for framestats on 1 dataset(s)" in said
    rows = site.client.spend(by=["analysis", "user"])
    assert rows == [
        {**rows[0], "analysis": "framestats", "user": "ann", "jobs": 1, "tasks": 1},
    ] and rows[0]["total"] == pytest.approx(site.job["cost"]["total"])
    budget = site.client.budget()
    assert budget["amount"] == 5 and budget["spent"] == pytest.approx(site.job["cost"]["total"])
    with Client(site.server.url, site.bob) as bob:
        assert bob.spend(by=["group"]) == [] and bob.budget() is None
        with pytest.raises(Exception, match="no analysis 'nope'"):
            bob.estimate("nope", sizes=[1])


def test_the_tco_figure_is_served(site):
    params = {"price": 2499, "standard": 0.42, "save": 0.2, "local_seconds": 1800}
    resp = httpx.get(
        f"{site.server.url}/api/tco.png", params=params, headers={"Authorization": f"Bearer {site.ann}"}, timeout=60
    )
    assert resp.status_code == 200 and resp.content[:4] == b"\x89PNG"
    bad = httpx.get(
        f"{site.server.url}/api/tco.png",
        params={**params, "standard": 0},
        headers={"Authorization": f"Bearer {site.ann}"},
        timeout=60,
    )
    assert bad.status_code == 400 and "standard" in json.dumps(bad.json())


def test_the_web_page_shows_estimate_cost_budget_and_tco(site):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (`make system-deps` installs it)")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox"], headless=True)
        page = browser.new_page(viewport={"width": 1200, "height": 1000})
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.set_default_timeout(60_000)
        page.goto(site.server.url + "/")
        page.fill("#token", site.ann)
        page.click("#signin-form button")
        expect = sync_api.expect
        expect(page.locator("#budget")).to_contain_text("Budget for")
        assert "of 5.00 USD" in page.text_content("#budget")
        expect(page.locator("#spend tbody tr")).to_have_count(1)
        page.select_option("#analysis", "caliali")
        page.check("#inputs input[value='a.npy']")
        expect(page.locator("#estimate")).to_contain_text("no estimate: caliali has no finished run")
        page.select_option("#analysis", "framestats")
        page.check("#inputs input[value='a.npy']")
        expect(page.locator("#estimate")).to_contain_text("estimate (standard) for framestats on 1 dataset(s)")
        page.select_option("#pricing", "save")
        expect(page.locator("#estimate")).to_contain_text("estimate (save)")
        page.click(f"#jobs tr[data-job='{site.job['id']}']")
        expect(page.locator("#job-cost")).to_contain_text("at the save price")
        page.click("#tco-form button")
        expect(page.locator("#tco-figure")).to_be_visible()
        assert page.locator("#tco-figure").evaluate("img => img.naturalWidth") > 0
        browser.close()
    assert not errors, errors
