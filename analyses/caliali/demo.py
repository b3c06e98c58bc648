"""`make demo`: caliali end to end on ncaas, as a scientist would run it.

1. simulate a 4-session one-photon experiment with ground truth; each session
   is longer than the per-file limit, so it arrives as sub-files
   (``ses01_b1.tif``, ``ses01_b2.tif``, ...) with a manifest mapping them to
   their sessions;
2. submit it to ncaas (embedded, no servers): the analysis environment is
   built from its lock if needed, the task runs sandboxed, with live progress;
3. score the result against the ground truth (F1, alignment error) and print
   where the NWB file, QC figures and certificate are.

Everything goes under ``./demo-data`` (``--root`` to change).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console

BIN = Path(sys.executable).parent
GROUP = "lab"
CONFIG = """\
# caliali parameters for the demo (every other parameter keeps its default;
# see analyses/caliali/blueprint.yaml for all of them)
gSig: 3           # neuron radius, px
min_corr: 0.2     # seed thresholds used for simulated data
min_pnr: 4
memory_budget: 1GB
dark_level: 1000  # the simulator's movies read 1000 where there is no light (its video_offset x video_scale)
# what DANDI asks of an NWB file (the animal here is simulated: give your own)
session_description: simulated one-photon recording of a head-fixed mouse, four sessions
experimenter: ["Doe, Jane"]
institution: caliali demo
keywords: [calcium imaging, one-photon, simulation]
subject_id: sim-mouse-01
species: Mus musculus
subject_sex: U
subject_age: P90D
indicator: GCaMP6f
imaging_location: CA1
excitation_lambda: 470
emission_lambda: 520
"""


def _run(console: Console, args: list[str], **kw) -> subprocess.CompletedProcess:
    console.print(f"[dim]$ {' '.join(str(a) for a in args)}[/dim]")
    return subprocess.run([str(a) for a in args], **kw)


def _inspect(nwb: Path) -> str:
    """nwbinspector's verdict on ``nwb`` at DANDI's level, in a few words."""
    try:
        from nwbinspector import Importance, inspect_nwbfile, load_config
    except ImportError:
        return "nwbinspector not installed: pip install nwbinspector to check it against DANDI's rules"
    messages = list(inspect_nwbfile(nwbfile_path=str(nwb), config=load_config("dandi")))
    count = {level: sum(m.importance == level for m in messages) for level in Importance}
    invalid = count[Importance.ERROR] + count[Importance.PYNWB_VALIDATION]
    return (
        f"nwbinspector, DANDI config: {invalid} errors, {count[Importance.CRITICAL]} critical, "
        f"{count[Importance.BEST_PRACTICE_VIOLATION]} best-practice violations, "
        f"{count[Importance.BEST_PRACTICE_SUGGESTION]} suggestions"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="demo-data", help="ncaas storage root for the demo")
    parser.add_argument("--sessions", type=int, default=4)
    parser.add_argument("--frames", type=int, default=1000, help="frames per session")
    parser.add_argument("--neurons", type=int, default=100)
    args = parser.parse_args(argv)
    console = Console(highlight=False, soft_wrap=True)  # paths stay whole (copyable) in logs and narrow terminals
    root = Path(args.root).resolve()
    work = root / "_simulated"
    experiment = work / "experiment"
    t0 = time.monotonic()

    console.rule("[bold]1. simulate a multi-session experiment with ground truth")
    if work.exists():
        shutil.rmtree(work)
    r = _run(
        console,
        [
            BIN / "caliali",
            "simulate",
            experiment,
            "--sessions",
            args.sessions,
            "--frames",
            args.frames,
            "--neurons",
            args.neurons,
            "--max-frames-per-file",
            (args.frames * 3) // 5,
            "--seed",
            7,
        ],
        stdout=subprocess.DEVNULL,
    )
    if r.returncode:
        return r.returncode
    truth = work / "ground_truth"
    shutil.move(experiment / "ground_truth", truth)  # the analysis never sees the answer
    files = sorted(p.name for p in experiment.iterdir())
    console.print(f"{args.sessions} sessions x {args.frames} frames, {args.neurons} neurons: {', '.join(files)}")
    config = work / "caliali-demo.yaml"
    config.write_text(CONFIG)

    console.rule("[bold]2. submit to ncaas (embedded) and watch")
    r = _run(
        console,
        [
            BIN / "ncaas",
            "submit",
            "caliali",
            experiment,
            "--config",
            config,
            "--group",
            GROUP,
            "--root",
            root,
            "--wait",
            "--name",
            f"demo-{time.strftime('%Y%m%d-%H%M%S')}",
        ],
    )
    results = sorted((root / GROUP / "results").glob("*/end.json"), key=lambda p: p.stat().st_mtime)
    if r.returncode or not results:
        console.print("[red]the job did not succeed; see the logs above[/red]")
        return r.returncode or 1
    job = results[-1].parent
    outputs = job / "outputs" / experiment.name

    console.rule("[bold]3. score against the ground truth")
    r = _run(console, [BIN / "caliali", "score", outputs, truth, "--json", work / "score.json"])
    if r.returncode:
        return r.returncode
    score = json.loads((work / "score.json").read_text())
    strict, lenient, offset = score["strict"], score["neurons"], score["offset"]
    console.rule("[bold]done")
    console.print(
        f"strict F1 against the ground truth (mask IoU >= 0.3 and trace r >= 0.8): [bold]{strict['f1']:.3f}[/bold] "
        f"(precision {strict['precision']:.3f}, recall {strict['recall']:.3f}; "
        f"frame offset {offset['dy']}, {offset['dx']} px); lenient F1 {lenient['f1']:.3f}"
    )
    if score.get("alignment"):
        a = score["alignment"]
        console.print(
            f"alignment error: median {a['median_px']:.2f} px, 95th percentile {a['p95_px']:.2f} px "
            f"(before alignment {a['unaligned_median_px']:.2f} / {a['unaligned_p95_px']:.2f} px)"
        )
    console.print(f"NWB file:     {outputs / 'neurons.nwb'}  ({_inspect(outputs / 'neurons.nwb')})")
    console.print(f"CaImAn file:  {outputs / 'caiman.hdf5'}  (caiman's load_CNMF, or h5py)")
    console.print(f"QC figures:   {outputs / 'qc'}  (contours.png, traces.png, sessions/)")
    console.print(f"alignment QC: {outputs / 'alignment'}")
    console.print(f"certificate:  {job / 'certificate.txt'} (and certificate.json)")
    console.print(f"logs:         {job / 'logs'}")
    console.print(f"total time:   {time.monotonic() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
