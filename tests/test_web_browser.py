"""The web page in a real browser: Playwright drives Debian's Chromium against a
real `ncaas serve`. A scientist signs in with a token, drops a file and picks a
multi-session folder, fixes a config value the form flags, submits the test
analysis, watches it finish, downloads the results, and views a QC image.
Screenshots land in build/screenshots/.
"""

from __future__ import annotations

import io
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

from ncaas.server.accounts import Accounts
from ncaas.server.state import default_database_url
from ncaas.server.testing import ServerProcess

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
SHOTS = Path(__file__).resolve().parents[1] / "build" / "screenshots"
BLUEPRINTS = Path(__file__).parent / "server_blueprints"

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
if not Path(CHROMIUM).exists():
    pytest.skip("Debian's chromium is not installed (apt-get install chromium; `make system-deps` does it)",
                allow_module_level=True)


def _npy(path: Path, seed: int, frames: int = 24) -> None:
    buf = io.BytesIO()
    np.save(buf, np.random.default_rng(seed).random((frames, 16, 16), dtype=np.float32))
    path.write_bytes(buf.getvalue())


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    base = tmp_path_factory.mktemp("web")
    root = base / "root"
    root.mkdir()
    accounts = Accounts.from_url(default_database_url(str(root)))
    accounts.add_group("lab")
    accounts.add_user("ann", "lab")
    token = accounts.issue_token("ann").token
    accounts.engine.dispose()
    with ServerProcess(root, env={"NCAAS_BLUEPRINTS": str(BLUEPRINTS)}) as server:
        yield {"server": server, "token": token, "base": base, "root": root}


@pytest.fixture(scope="module")
def page(site):
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        context = browser.new_context(accept_downloads=True, viewport={"width": 1200, "height": 1000})
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.set_default_timeout(60_000)
        yield page
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / "web-last.png"), full_page=True)  # what the page showed at the end
        context.close()
        browser.close()
        assert not errors, errors


def _drop_file(page, path: Path) -> None:
    """Drop a file on the drop zone the way a browser does: a drop event carrying a DataTransfer."""
    data = list(path.read_bytes())
    page.evaluate("""([name, bytes]) => {
        const dt = new DataTransfer();
        dt.items.add(new File([new Uint8Array(bytes)], name, { type: "application/octet-stream" }));
        const zone = document.querySelector("#dropzone");
        zone.dispatchEvent(new DragEvent("dragover", { dataTransfer: dt, bubbles: true, cancelable: true }));
        zone.dispatchEvent(new DragEvent("drop", { dataTransfer: dt, bubbles: true, cancelable: true }));
    }""", [path.name, data])


def test_sign_in_upload_submit_watch_download(site, page):
    base, server = site["base"], site["server"]
    _npy(base / "a.npy", 0)
    (base / "exp1").mkdir()
    for i, session in enumerate(("session1", "session2")):  # a multi-session experiment: one folder
        _npy(base / "exp1" / f"{session}.npy", i + 1, frames=12)

    page.goto(server.url + "/")
    page.fill("#token", "ncaas_wrong")
    page.click("#signin-form button")
    page.wait_for_selector("#signin-error:has-text('unknown or revoked')")
    page.fill("#token", site["token"])
    page.click("#signin-form button")
    page.wait_for_selector("#whoami:has-text('ann · group lab')")

    page.select_option("#analysis", "framestats")
    assert page.input_value("#cfg-batch_frames") == "64"  # defaults shown
    assert page.locator("#config-form").inner_text().count("default:") >= 5

    _drop_file(page, base / "a.npy")
    page.set_input_files("#pick-folder", str(base / "exp1"))
    page.wait_for_selector("#uploads li[data-dataset='a.npy'] .muted:has-text('uploaded')")
    page.wait_for_selector("#uploads li[data-dataset='exp1'] .muted:has-text('uploaded')")
    assert page.is_checked("#inputs input[value='a.npy']") and page.is_checked("#inputs input[value='exp1']")
    assert (site["root"] / "lab" / "inputs" / "exp1" / "session2.npy").read_bytes() == \
        (base / "exp1" / "session2.npy").read_bytes()

    page.fill("#cfg-batch_frames", "0")  # invalid: flagged before submitting
    assert "must be ≥ 1" in page.inner_text("#problem-batch_frames")
    assert page.is_disabled("#submit") and "batch_frames" in page.inner_text("#submit-hint")
    page.fill("#cfg-batch_frames", "2.5")
    assert "whole number" in page.inner_text("#problem-batch_frames")
    page.fill("#cfg-batch_frames", "4")
    page.fill("#cfg-stats", '["mean", "median"]')  # list items are checked against the schema too
    assert '"median" is not one of' in page.inner_text("#problem-stats") and page.is_disabled("#submit")
    page.fill("#cfg-stats", '["mean", "max"]')
    page.fill("#cfg-sleep_per_frame", "0.05")
    assert page.is_enabled("#submit")
    page.click("#submit")

    page.wait_for_selector("#job-detail:not([hidden])")
    page.wait_for_selector(".task[data-dataset='a.npy'] .state.running, .task[data-dataset='a.npy'] .state.succeeded")
    page.wait_for_selector("#job-state.succeeded", timeout=40_000)
    for dataset in ("a.npy", "exp1"):
        box = page.locator(f".task[data-dataset='{dataset}']")
        assert box.locator(".state").inner_text() == "succeeded"
        assert "NCAAS_PROGRESS 1.000 done" in box.locator("pre").inner_text()  # logs streamed live
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "web-job-succeeded.png"), full_page=True)

    with page.expect_download() as info:
        page.click("#download-zip")
    archive = base / "results.zip"
    info.value.save_as(archive)
    with zipfile.ZipFile(archive) as zf:
        names = set(zf.namelist())
        assert zf.read("outputs/a.npy/a.stats.csv").decode().startswith("frame,mean,max")
    assert {"certificate.json", "end.json", "outputs/a.npy/a.stats.csv", "outputs/exp1/session1.stats.csv",
            "outputs/exp1/session2.stats.csv"} <= names
    with page.expect_popup() as popup:
        page.click("#download-cert")
    popup.value.wait_for_load_state()
    assert "ncaas certificate" in popup.value.inner_text("body")
    popup.value.close()


def test_a_large_file_is_sent_in_checksummed_chunks(site, page):
    big = site["base"] / "big.bin"
    data = np.random.default_rng(7).bytes(17 << 20)  # three 8 MiB chunks
    big.write_bytes(data)
    assert page.evaluate("() => Boolean(window.isSecureContext && crypto.subtle)")  # so chunks carry SHA-256
    page.set_input_files("#pick-files", str(big))
    page.wait_for_selector("#uploads li[data-dataset='big.bin'] .muted:has-text('uploaded')", timeout=120_000)
    assert (site["root"] / "lab" / "inputs" / "big.bin").read_bytes() == data
    page.uncheck("#inputs input[value='big.bin']")


def test_qc_images_are_shown(site, page):
    page.select_option("#analysis", "qcimage")
    page.uncheck("#inputs input[value='exp1']")
    page.click("#submit")
    page.wait_for_selector("#job-state.succeeded", timeout=120_000)
    image = page.wait_for_selector("#qc img")
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=image)
    assert "outputs/a.npy/qc/mean.png" in page.inner_text("#qc")
    page.screenshot(path=str(SHOTS / "web-qc.png"), full_page=True)
    shutil.copy(SHOTS / "web-qc.png", site["base"] / "web-qc.png")
