"""The review page on a large result: 500 neurons, 100,000 frames, a 600 × 600 field.

A real server runs the test analysis ``neurons-synthetic`` (tests/review_blueprints), which writes
the result in the neurons layout (600 MB of traces); then Chromium opens its review page and
switches between neurons, and httpx times the API calls alone. Prints median and max per step.

    .venv/bin/python benchmarks/review.py [--neurons 500 --frames 100000 --size 600 --switches 20]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from ncaas.client import Client  # noqa: E402
from ncaas.testing.servers import ServerProcess, storage_with_user  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]


def _line(label: str, values: list[float]) -> None:
    print(f"  {label:<44} median {statistics.median(values):7.0f} ms   max {max(values):7.0f} ms   (n={len(values)})")


def _api(http: httpx.Client, base: str, neurons: list[int], frames: int) -> None:
    print("API alone (httpx, server caches warm):")
    for name, path in (
        ("summary", ""),
        ("neuron table", "/neurons"),
        ("contours", "/contours"),
        ("background PNG", "/image.png?kind=Cn"),
        ("decisions", "/decisions"),
    ):
        times = []
        for _ in range(5):
            t = time.perf_counter()
            http.get(base + path).raise_for_status()
            times.append((time.perf_counter() - t) * 1000)
        _line(name, times)
    traces, prints = [], []
    for k in neurons:
        t = time.perf_counter()
        http.get(f"{base}/neurons/{k}?points=2000").raise_for_status()
        traces.append((time.perf_counter() - t) * 1000)
        t = time.perf_counter()
        http.get(f"{base}/neurons/{k}/footprint.png").raise_for_status()
        prints.append((time.perf_counter() - t) * 1000)
    _line(f"one neuron: traces (3 × {frames:,} frames) + facts", traces)
    _line("one neuron: footprint PNG", prints)


def _browser(url: str, token: str, neurons: list[int], screenshot: str | None) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(url.split("/review")[0] + "/")
        page.evaluate("token => sessionStorage.setItem('ncaas-token', token)", token)
        opens, images = [], []
        for attempt in range(3):  # the first open reads the result (server caches cold)
            page.goto(url)
            page.wait_for_selector("body[data-ready='1']", timeout=600_000)
            timings = page.evaluate("window.reviewState.timings")
            opens.append(timings["contours"])
            images.append(timings["image"])
            print(f"  open {attempt + 1}: contours drawn {opens[-1]:.0f} ms, background {images[-1]:.0f} ms")
        print("Chromium:")
        _line("page open -> contours drawn (first open: cold)", opens[:1])
        _line("page open -> contours drawn (warm)", opens[1:])
        _line("page open -> background image drawn too (warm)", images[1:])
        switches, inside = [], []
        for k in neurons:
            t = time.perf_counter()
            page.click(f"#table-body tr[data-neuron='{k}']")
            page.wait_for_selector(f"body[data-shown='{k}']", timeout=60_000)
            switches.append((time.perf_counter() - t) * 1000)
            inside.append(page.evaluate("window.reviewState.timings.neuron"))
        _line("switch neuron: click -> footprint + traces drawn", switches)
        _line("  of which in the page (fetch + draw)", inside)
        if screenshot:
            page.screenshot(path=screenshot, full_page=False)
        browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--neurons", type=int, default=500)
    parser.add_argument("--frames", type=int, default=100_000)
    parser.add_argument("--size", type=int, default=600)
    parser.add_argument("--switches", type=int, default=20)
    parser.add_argument("--screenshot", help="save the page as it was at the end (PNG)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ncaas-review-bench-") as tmp:
        root = Path(tmp) / "root"
        token = storage_with_user(root)
        (root / "lab" / "inputs").mkdir(parents=True, exist_ok=True)
        (root / "lab" / "inputs" / "session.txt").write_text("synthetic\n")
        env = {"NCAAS_BLUEPRINTS": str(REPO / "tests" / "review_blueprints")}
        with ServerProcess(root, env=env) as server, Client(server.url, token) as client:
            config = {
                "neurons": args.neurons,
                "frames": args.frames,
                "height": args.size,
                "width": args.size,
                "radius": 6,
            }
            t = time.perf_counter()
            job = client.wait(client.submit("neurons-synthetic", ["session.txt"], config=config)["id"])
            assert job["state"] == "succeeded", job
            print(
                f"result: {args.neurons} neurons, {args.frames} frames, {args.size}x{args.size} "
                f"(written by a job in {time.perf_counter() - t:.0f} s)"
            )
            url = f"{server.url}/review?job={job['id']}&dataset=session.txt"
            step = max(1, args.neurons // args.switches)
            neurons = list(range(0, args.neurons, step))[: args.switches]
            _browser(url, token, neurons, args.screenshot)
            with httpx.Client(headers={"Authorization": f"Bearer {token}"}, timeout=120) as http:
                _api(http, f"{server.url}/api/jobs/{job['id']}/review/session.txt", neurons, args.frames)


if __name__ == "__main__":
    main()
