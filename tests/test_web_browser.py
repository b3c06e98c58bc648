"""The web page in a real browser: Playwright drives Debian's Chromium against a
real `ncaas serve`. A scientist signs in with a token, drops a file and picks a
multi-session folder, fixes a config value the form flags, submits the test
analysis, watches it finish, downloads the results, and views a QC image. Then
files and a multi-session folder are dragged from disk onto the page through the
browser's own drag-and-drop input (DevTools Protocol), uploaded with progress, and
the folder is run. Screenshots land in build/screenshots/.
"""

from __future__ import annotations

import hashlib
import io
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import httpx
import numpy as np
import pytest
from crc32c import crc32c

from ncaas.testing.servers import ServerProcess, storage_with_user

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SHOTS = Path(__file__).resolve().parents[1] / "build" / "screenshots"
BLUEPRINTS = Path(__file__).parent / "server_blueprints"

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
if not Path(CHROMIUM).exists():
    pytest.skip(
        "Debian's chromium is not installed (apt-get install chromium; `make system-deps` does it)",
        allow_module_level=True,
    )


def _npy(path: Path, seed: int, frames: int = 24) -> None:
    buf = io.BytesIO()
    np.save(buf, np.random.default_rng(seed).random((frames, 16, 16), dtype=np.float32))
    path.write_bytes(buf.getvalue())


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    base = tmp_path_factory.mktemp("web")
    root = base / "root"
    token = storage_with_user(root)
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
        # the page works under its Content-Security-Policy: nothing it uses is refused
        page.on("console", lambda msg: errors.append(msg.text) if "Content Security Policy" in msg.text else None)
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
    page.evaluate(
        """([name, bytes]) => {
        const dt = new DataTransfer();
        dt.items.add(new File([new Uint8Array(bytes)], name, { type: "application/octet-stream" }));
        const zone = document.querySelector("#dropzone");
        zone.dispatchEvent(new DragEvent("dragover", { dataTransfer: dt, bubbles: true, cancelable: true }));
        zone.dispatchEvent(new DragEvent("drop", { dataTransfer: dt, bubbles: true, cancelable: true }));
    }""",
        [path.name, data],
    )


def test_sign_in_upload_submit_watch_download(site, page):
    base, server = site["base"], site["server"]
    _npy(base / "a.npy", 0)
    (base / "exp1").mkdir()
    for i, session in enumerate(("session1", "session2")):  # a multi-session experiment: one folder
        _npy(base / "exp1" / f"{session}.npy", i + 1, frames=12)
    (base / "exp1" / ".DS_Store").write_bytes(b"Bud1")  # clutter a Mac leaves: not uploaded
    (base / "exp1" / "._session1.npy").write_bytes(b"\x00\x05\x16\x07")

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
    assert (site["root"] / "lab" / "inputs" / "exp1" / "session2.npy").read_bytes() == (
        base / "exp1" / "session2.npy"
    ).read_bytes()
    assert sorted(p.name for p in (site["root"] / "lab" / "inputs" / "exp1").iterdir()) == [
        "session1.npy",
        "session2.npy",
    ]
    assert (
        page.inner_text("#uploads li[data-dataset='exp1'] .left-out")
        == "left out 2 hidden files: .DS_Store, ._session1.npy"
    )

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
    assert {
        "certificate.json",
        "end.json",
        "outputs/a.npy/a.stats.csv",
        "outputs/exp1/session1.stats.csv",
        "outputs/exp1/session2.stats.csv",
    } <= names
    with page.expect_popup() as popup:
        page.click("#download-cert")
    popup.value.wait_for_load_state()
    assert "ncaas certificate" in popup.value.inner_text("body")
    popup.value.close()


def test_a_large_file_is_sent_in_checksummed_chunks(site, page):
    """Each 8 MiB chunk carries its CRC-32C and the completion the whole file's; a chunk corrupted
    on the way is refused by the server and sent again, and the file arrives byte-exact."""
    big = site["base"] / "big.bin"
    data = np.random.default_rng(7).bytes(17 << 20)  # three 8 MiB chunks
    big.write_bytes(data)
    puts, completes, answers = [], [], []

    def corrupt_the_second_chunk_once(route):
        body = route.request.post_data_buffer
        puts.append((route.request.url, route.request.headers.get("x-chunk-crc32c"), len(body)))
        if "offset=8388608" in route.request.url and not any("offset=8388608" in u for u, _ in answers):
            body = body[:100] + bytes([body[100] ^ 0xFF]) + body[101:]  # one flipped byte on the way
        route.continue_(post_data=body)

    page.on("response", lambda r: answers.append((r.url, r.status)) if r.request.method == "PUT" else None)
    page.on("request", lambda r: completes.append(r.post_data_json) if r.url.endswith("/complete") else None)
    page.route("**/api/uploads/*?offset=*", corrupt_the_second_chunk_once)
    try:
        page.set_input_files("#pick-files", str(big))
        page.wait_for_selector("#uploads li[data-dataset='big.bin'] .muted:has-text('uploaded')", timeout=120_000)
    finally:
        page.unroute("**/api/uploads/*?offset=*")
    assert (site["root"] / "lab" / "inputs" / "big.bin").read_bytes() == data
    chunks = {0: data[: 8 << 20], 8 << 20: data[8 << 20 : 16 << 20], 16 << 20: data[16 << 20 :]}
    for url, crc, size in puts:
        offset = int(url.rsplit("offset=", 1)[1])
        assert crc == f"{crc32c(chunks[offset]):08x}" and size == len(chunks[offset]), url
    statuses = [status for url, status in answers if "offset=8388608" in url]
    assert statuses[0] == 422 and statuses[-1] == 200, answers  # refused as corrupted, then sent again
    assert completes == [{"crc32c": f"{crc32c(data):08x}"}]
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
    with page.context.expect_page() as opened:  # the full-size image, in a tab of its own
        page.click("#qc figure a")
    tab = opened.value
    tab.wait_for_function("() => document.images.length && document.images[0].naturalWidth > 0")
    tab.close()


def test_a_failed_task_shows_the_reason_it_gave(site, page):
    page.select_option("#analysis", "framestats")
    for box in page.query_selector_all("#inputs input:checked"):
        box.uncheck()
    page.check("#inputs input[value='a.npy']")
    page.fill("#cfg-fail_reason", "a.npy holds no frames: upload the recording again")
    page.click("#submit")
    page.wait_for_selector("#job-state.failed", timeout=60_000)
    message = page.locator(".task[data-dataset='a.npy'] .message").inner_text()
    assert message == "exited with code 3: a.npy holds no frames: upload the recording again"
    assert "error" in page.get_attribute(".task[data-dataset='a.npy'] .message", "class").split()


def test_a_pipeline_submitted_from_the_page_shows_its_chain_and_why_it_stopped(site, page):
    page.check("#use-pipeline")
    page.fill(
        "#pipeline-yaml",
        "name: twice\nsteps:\n"
        "  - {name: first, analysis: framestats, config: {fail_reason: 'frame 3 is empty'}}\n"
        "  - {name: second, analysis: framestats}\n",
    )
    for box in page.query_selector_all("#inputs input:checked"):
        box.uncheck()
    page.check("#inputs input[value='a.npy']")
    page.click("#submit")
    page.wait_for_selector("#chain-state.failed", timeout=60_000)
    row = page.locator("#chain-grid tr[data-dataset='a.npy']")
    assert row.locator(".state").all_inner_texts() == ["failed", "stopped"]
    reasons = row.locator(".reason").all_inner_texts()
    assert reasons == [
        "exited with code 3: frame 3 is empty",
        "not run: step 'first' failed (exited with code 3: frame 3 is empty)",
    ]
    assert page.locator("#chains tbody tr").count() >= 1
    row.locator("button.link").first.click()  # the step's job: its tasks and log
    page.wait_for_selector("#job-state.failed")
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "web-chain.png"), full_page=True)
    page.uncheck("#use-pipeline")


def test_a_reruns_page_shows_its_verdict_file_by_file(site, page):
    done = next(j for j in _api(site, "/api/jobs") if j["analysis"] == "qcimage" and j["state"] == "succeeded")
    resp = httpx.post(
        f"{site['server'].url}/api/jobs/{done['id']}/rerun",
        headers={"Authorization": f"Bearer {site['token']}"},
        timeout=30,
    )
    assert resp.status_code == 201, resp.text
    rerun = resp.json()["id"]
    page.click("#refresh-jobs")
    page.click(f"#jobs tr[data-job='{rerun}']")
    page.wait_for_selector("#verdict-summary.ok", timeout=120_000)
    assert page.inner_text("#verdict-original") == done["id"]
    summary = page.inner_text("#verdict-summary")
    assert re.fullmatch(r"\d+ identical, 0 equal within tolerance, 0 different", summary), summary
    cells = page.locator("#verdict tbody tr").first.locator("td").all_inner_texts()
    assert cells[0].startswith("a.npy/") and cells[1] == "identical", cells
    page.screenshot(path=str(SHOTS / "web-rerun-verdict.png"), full_page=True)
    page.click(f"#jobs tr[data-job='{done['id']}']")  # the original is no rerun: no verdict shown
    page.wait_for_selector("#verdict-panel", state="hidden")


# -- drag and drop from the file system ----------------------------------------------------
# Chromium's DevTools Protocol drags real paths onto the page (Input.dispatchDragEvent with
# data.files): the browser builds the DataTransfer itself, exactly as for a drag from a file
# manager, so a dropped directory arrives as a FileSystemDirectoryEntry that the page walks.
# (A DataTransfer built in page JavaScript cannot hold a directory.)

_TRACE_UPLOADS = """() => {
    window.uploadTrace = [];   // [dataset, bar value, bar max, row text] at every change of #uploads
    new MutationObserver((changes) => {
        const rows = new Set(changes.map((c) => (c.target.closest ? c.target : c.target.parentElement).closest("li")));
        for (const row of rows) {
            const bar = row && row.querySelector("progress");
            if (bar) window.uploadTrace.push([row.dataset.dataset, bar.value, bar.max, row.textContent]);
        }
    }).observe(document.querySelector("#uploads"),
               { subtree: true, childList: true, attributes: true, characterData: true });
}"""


def _fresh_page(page, site) -> None:
    """Load the page anew, signed in (by the token this tab saved, or by typing it)."""
    page.goto(site["server"].url + "/")
    if not page.evaluate("() => sessionStorage.getItem('ncaas-token')"):  # with one, the page signs in by itself
        page.fill("#token", site["token"])
        page.click("#signin-form button")
    page.wait_for_selector("#whoami:has-text('ann · group lab')")
    page.wait_for_selector("#config-form > *")  # the form above the drop zone is in place
    page.wait_for_selector("#inputs li")
    page.evaluate(_TRACE_UPLOADS)


def _drag(page, paths: list[Path], selector: str, steps=("dragEnter", "dragOver", "drop")) -> None:
    """Drag files and folders from disk over the element ``selector`` (a point inside its
    padding, off any child) through the browser's own drag-and-drop input pipeline."""
    target = page.locator(selector)
    target.scroll_into_view_if_needed()
    box = target.bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + 6
    assert page.evaluate(
        "([sel, x, y]) => document.querySelector(sel).contains(document.elementFromPoint(x, y))", [selector, x, y]
    ), f"{selector} is not under the point ({x}, {y})"
    data = {"items": [], "files": [str(p.resolve()) for p in paths], "dragOperationsMask": 1}  # 1: copy
    cdp = page.context.new_cdp_session(page)
    try:
        for step in steps:
            cdp.send("Input.dispatchDragEvent", {"type": step, "x": x, "y": y, "data": data})
    finally:
        cdp.detach()


def _trace(page, dataset: str) -> list[tuple[float, float, str]]:
    return [(v, m, text) for name, v, m, text in page.evaluate("() => window.uploadTrace") if name == dataset]


def _api(site, path: str):
    resp = httpx.get(site["server"].url + path, headers={"Authorization": f"Bearer {site['token']}"}, timeout=30)
    resp.raise_for_status()
    return resp.json()


def _tree(base: Path) -> dict[str, bytes]:
    return {p.relative_to(base).as_posix(): p.read_bytes() for p in sorted(base.rglob("*")) if p.is_file()}


def test_dragging_two_files_onto_the_page_uploads_each_as_a_dataset(site, page):
    base, inputs = site["base"] / "drag2", site["root"] / "lab" / "inputs"
    base.mkdir()
    _npy(base / "day1.npy", 11, frames=2000)  # 2 MB each: the progress bar has something to show
    _npy(base / "day2.npy", 12, frames=1500)
    _fresh_page(page, site)
    url = page.url

    # Beside the zone the page answers "no drop here" (a window that lets a file drag through
    # has the browser open the file in place of the page; headless Chromium does not, so the
    # page's answer to the drag is what is checked) and nothing uploads.
    page.evaluate("""() => window.addEventListener('dragover', (e) => {
        window.besideAnswer = [e.defaultPrevented, e.dataTransfer.dropEffect]; })""")
    _drag(page, [base / "day1.npy"], "header")
    assert page.evaluate("() => window.besideAnswer") == [True, "none"]
    assert page.url == url and page.locator("#uploads li").count() == 0

    _drag(page, [base / "day1.npy", base / "day2.npy"], "#dropzone", steps=("dragEnter", "dragOver"))
    assert "over" in page.get_attribute("#dropzone", "class")  # the zone lights up under the drag
    _drag(page, [base / "day1.npy", base / "day2.npy"], "#dropzone", steps=("drop",))
    for name in ("day1.npy", "day2.npy"):
        page.wait_for_selector(f"#uploads li[data-dataset='{name}'] .muted:has-text('uploaded')")
        trace = _trace(page, name)
        values = [v for v, _, _ in trace]
        assert values == sorted(values) and values[-1] == trace[-1][1] == (base / name).stat().st_size, trace
        assert any("% of" in text for _, _, text in trace), trace  # progress was reported while sending
        assert (inputs / name).read_bytes() == (base / name).read_bytes()
        info = _api(site, f"/api/inputs/{name}")
        assert info["kind"] == "file" and info["sha256"] == hashlib.sha256((base / name).read_bytes()).hexdigest()
        assert page.is_checked(f"#inputs input[value='{name}']")  # ticked for the next submit
    assert "over" not in page.get_attribute("#dropzone", "class")


def test_dragging_a_multi_session_folder_uploads_it_whole_and_runs_it(site, page):
    """A dropped folder lands as one dataset with its inner layout kept: sessions at the top,
    a nested folder of 105 frames (more than the 100 entries Chromium's readEntries hands out
    at once) two levels down, and an empty sub-folder (nothing to store). An empty folder
    dropped next to it is reported, not uploaded. Hidden files and system clutter inside the
    folder (.DS_Store, a ._ resource fork, .git/) stay behind and the row says so; a folder of
    nothing but hidden files is refused; a hidden file dropped by name is uploaded. framestats
    then runs the folder as one multi-session dataset (one result per session file)."""
    base, inputs = site["base"] / "drag-folder", site["root"] / "lab" / "inputs"
    exp = base / "mouse7"
    (exp / "raw" / "day3").mkdir(parents=True)
    (exp / "raw" / "unused").mkdir()
    (base / "nothing-here").mkdir()
    for i in range(3):
        _npy(exp / f"session{i + 1}.npy", 20 + i, frames=40)
    for i in range(105):
        (exp / "raw" / "day3" / f"frame{i:03d}.tif").write_bytes(bytes([i]) * (64 + i))
    (exp / "notes.txt").write_text("three sessions, one mouse\n")
    hidden = {
        ".DS_Store": b"Bud1\x00",
        "raw/day3/._frame000.tif": b"\x00\x05\x16\x07",
        ".git/HEAD": b"ref\n",
        "raw/Thumbs.db": b"thumbs",
    }
    for rel, data in hidden.items():
        (exp / rel).parent.mkdir(exist_ok=True)
        (exp / rel).write_bytes(data)
    (base / "only-hidden").mkdir()
    (base / "only-hidden" / ".DS_Store").write_bytes(b"Bud1")
    (base / ".calibration.json").write_text('{"um_per_px": 1.2}')  # dropped by name: uploaded
    _fresh_page(page, site)

    _drag(page, [exp, base / "nothing-here", base / "only-hidden", base / ".calibration.json"], "#dropzone")
    page.wait_for_selector("#uploads li[data-dataset='mouse7'] .muted:has-text('uploaded')", timeout=120_000)
    page.wait_for_selector("#uploads li[data-dataset='.calibration.json'] .muted:has-text('uploaded')")
    assert "empty folder" in page.inner_text("#uploads li[data-dataset='nothing-here']", timeout=5_000)
    assert (
        page.inner_text("#uploads li[data-dataset='only-hidden'] .error")
        == "holds only hidden files (.DS_Store): nothing to upload"
    )
    assert (
        page.inner_text("#uploads li[data-dataset='mouse7'] .left-out")
        == "left out 3 hidden files and 1 hidden folder: .DS_Store, .git/, raw/Thumbs.db, raw/day3/._frame000.tif"
    )
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "web-dropped-folder.png"), full_page=True)

    sent = {rel: data for rel, data in _tree(exp).items() if rel not in hidden}
    assert len(sent) == 3 + 105 + 1
    assert "mouse7/" in page.inner_text("#uploads li[data-dataset='mouse7']")
    trace = _trace(page, "mouse7")
    values = [v for v, _, _ in trace]
    total = sum(len(b) for b in sent.values())
    assert values == sorted(values) and values[-1] == total, trace
    assert any(0 < v < total for v in values), trace  # progress moved file by file
    assert _tree(inputs / "mouse7") == sent  # every file, at its relative path, byte for byte
    assert not (inputs / "nothing-here").exists() and not (inputs / "mouse7" / "raw" / "unused").exists()
    assert not (inputs / "only-hidden").exists() and not (inputs / "mouse7" / ".git").exists()
    assert (inputs / ".calibration.json").read_bytes() == (base / ".calibration.json").read_bytes()
    listed = {d["name"]: d for d in _api(site, "/api/inputs")}
    assert listed["mouse7"]["kind"] == "folder" and listed["mouse7"]["files"] == len(sent)
    assert listed["mouse7"]["size"] == total and "nothing-here" not in listed
    deep = _api(site, "/api/inputs/mouse7/raw/day3/frame104.tif")
    assert deep["sha256"] == hashlib.sha256(sent["raw/day3/frame104.tif"]).hexdigest()

    page.select_option("#analysis", "framestats")
    while page.locator("#inputs input:checked").count():  # mouse7 and .calibration.json were ticked
        page.locator("#inputs input:checked").first.uncheck()
    page.check("#inputs input[value='mouse7']")
    page.click("#submit")
    page.wait_for_selector("#job-state.succeeded", timeout=60_000)
    assert page.locator(".task").count() == 1  # the folder is one dataset
    job = page.inner_text("#job-id")
    results = {f["path"] for f in _api(site, f"/api/jobs/{job}/files")}
    assert {f"outputs/mouse7/session{i}.stats.csv" for i in (1, 2, 3)} <= results, results


def test_a_file_over_the_groups_quota_is_refused_with_the_reason(site, page):
    base = site["base"] / "quota"
    base.mkdir()
    _npy(base / "too-big.npy", 13, frames=200)
    where = ["--root", str(site["root"])]
    subprocess.run(
        [sys.executable, "-m", "ncaas", "admin", "set-quota", "lab", "1KB", *where], check=True, capture_output=True
    )
    try:
        _fresh_page(page, site)
        _drag(page, [base / "too-big.npy"], "#dropzone")
        row = page.wait_for_selector("#uploads li[data-dataset='too-big.npy']:has-text('failed')")
        assert "group 'lab' would go over its quota" in row.inner_text()
        assert not (site["root"] / "lab" / "inputs" / "too-big.npy").exists()
    finally:
        subprocess.run(
            [sys.executable, "-m", "ncaas", "admin", "set-quota", "lab", "none", *where],
            check=True,
            capture_output=True,
        )
