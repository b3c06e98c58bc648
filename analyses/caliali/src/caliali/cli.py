"""The ``caliali`` command line: parse, call the library, print.

Errors derived from :class:`caliali.exceptions.CalialiError` are rendered in
one place (:func:`main`) with their exit code, never as a traceback; any other
exception is a fault of caliali's, also said in one line, its traceback saved
to a file the line names (``traceback.txt`` in the output folder of ``run``).
Under ncaas the same line is also written to the file ``NCAAS_ERROR_FILE`` names, so the
platform shows it as the run's failure reason (ncaas's README: "Telling why a task failed").
Add a command by importing its library function inside a small
``@app.command()``.
"""

from __future__ import annotations

import errno
import os
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from caliali.exceptions import CalialiError

__all__ = ["app", "main"]

app = typer.Typer(
    name="caliali",
    help="Multi-session one-photon calcium imaging in bounded memory.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console()
errors = Console(stderr=True)
# Where an unexpected error's traceback goes: the output folder once `run` knows it.
_traceback_dir: Path | None = None


@app.command()
def simulate(
    out: Annotated[Path, typer.Argument(help="Folder to write (manifest, videos, ground_truth/).")],
    sessions: Annotated[int, typer.Option(help="Number of sessions.")] = 3,
    frames: Annotated[int, typer.Option(help="Frames per session.")] = 1000,
    neurons: Annotated[
        int | None, typer.Option(help="Neurons (default by variant: 100, sparse 20, dense 300).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Random seed; same seed, same data.")] = 0,
    variant: Annotated[str, typer.Option(help="ideal | remap | sparse | dense.")] = "ideal",
    within_motion: Annotated[bool, typer.Option("--within-motion", help="Add rigid motion within sessions.")] = False,
    max_frames_per_file: Annotated[int | None, typer.Option(help="Cut sessions into <name>_b<k> files.")] = None,
    pnr: Annotated[float, typer.Option(help="Peak-to-noise ratio of a single spike.")] = 2.0,
    format: Annotated[str, typer.Option("--format", help="tif (float32) | avi (lossless FFV1 uint16).")] = "tif",
    height: Annotated[int, typer.Option(help="Video height, px (field is 40 px larger before cropping).")] = 180,
    width: Annotated[int, typer.Option(help="Video width, px.")] = 260,
    fs: Annotated[float, typer.Option(help="Frame rate, Hz.")] = 10.0,
) -> None:
    """Simulate a multi-session experiment with ground truth."""
    from caliali.chunking import print_progress
    from caliali.simulate import SimulationParams
    from caliali.simulate import simulate as run

    params = SimulationParams(
        sessions=sessions,
        frames=frames,
        neurons=neurons,
        seed=seed,
        variant=variant,
        within_motion=within_motion,
        max_frames_per_file=max_frames_per_file,
        pnr=pnr,
        format=format,
        height=height,
        width=width,
        fs=fs,
    )
    result = run(out, params, progress=print_progress)
    console.print(
        f"[green]wrote[/green] {params.sessions} sessions x {params.frames} frames, "
        f"{params.n_neurons} neurons ({params.variant}) to {result.out}; manifest {result.manifest.name}, "
        f"ground truth in {result.ground_truth.name}/"
    )


@app.command()
def split(
    files: Annotated[list[Path], typer.Argument(help="Video files; each is one session.")],
    max_frames: Annotated[int, typer.Option(help="Most frames per piece.")] = 3000,
    out: Annotated[Path | None, typer.Option(help="Output folder (default: <first file's folder>/split).")] = None,
    dataset: Annotated[str | None, typer.Option(help="Array inside HDF5/zarr/NWB inputs.")] = None,
    memory_budget: Annotated[str, typer.Option(help="Memory for frames in flight, e.g. 1GB.")] = "1GB",
) -> None:
    """Cut videos into <name>_b1, _b2, ... pieces of at most --max-frames and write manifest.yaml."""
    from caliali.experiment import split_files

    out = out if out is not None else files[0].parent / "split"
    experiment = split_files(files, out, max_frames=max_frames, dataset=dataset, memory_budget=memory_budget)
    for session in experiment.sessions:
        console.print(f"{session.id}: {len(session.files)} piece(s): {', '.join(p.name for p in session.files)}")
    console.print(f"[green]manifest[/green] {experiment.source}")


@app.command()
def score(
    result: Annotated[Path, typer.Argument(help="A caliali result folder (arrays/, alignment/).")],
    ground_truth: Annotated[Path, typer.Argument(help="ground_truth/ or the simulation folder holding it.")],
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Where to write the scores (default RESULT/score.json).")
    ] = None,
    trace_threshold: Annotated[
        float, typer.Option(help="Trace correlation (strict) / cosine (lenient) a match needs.")
    ] = 0.8,
    iou_threshold: Annotated[float, typer.Option(help="Mask IoU a match needs.")] = 0.3,
    align: Annotated[
        bool, typer.Option(help="Move the ground truth by the global offset between the two frames before matching.")
    ] = True,
) -> None:
    """Score a result against simulated ground truth: strict F1 (mask IoU and trace), IoU F1, lenient F1, alignment."""
    import json

    from rich.table import Table

    from caliali.score import score as run

    scores = run(result, ground_truth, trace_threshold=trace_threshold, iou_threshold=iou_threshold, align=align)
    n, m, st, off, a = scores.neurons, scores.masks, scores.strict, scores.offset, scores.alignment
    table = Table("score", "value", title=f"{result} vs {ground_truth}")
    table.add_row("true neurons", str(st.n_true))
    table.add_row("found neurons", str(st.n_found))
    table.add_row(
        f"[bold]strict F1[/bold] (mask IoU >= {st.iou_threshold:g} and trace r >= {st.trace_threshold:g})",
        f"[bold]{st.f1:.3f}[/bold]",
    )
    table.add_row("  matched / precision / recall", f"{st.n_matched} / {st.precision:.3f} / {st.recall:.3f}")
    table.add_row(
        f"IoU F1 (masks at {m.mask_fraction:g} x max, IoU >= {m.iou_threshold:g})",
        f"{m.f1:.3f}",
    )
    table.add_row("  matched / precision / recall", f"{m.n_matched} / {m.precision:.3f} / {m.recall:.3f}")
    table.add_row("  median IoU of matches", f"{m.median_iou:.3f}")
    frames = {
        "session": "the session's (the simulation's deformation)",
        "aligned": "the result's aligned frame (its fields and the simulation's)",
        "truth": "its own",
    }
    table.add_row("ground truth matched in the frame", frames[scores.frame] if align else "its own (--no-align)")
    table.add_row(
        "then moved by the frame offset (dy, dx px)",
        f"{off.dy:g}, {off.dx:g} (estimate {off.estimate_dy:.2f}, {off.estimate_dx:.2f})"
        if align
        else "0, 0 (--no-align)",
    )
    table.add_row(
        f"lenient F1 (footprint x trace cosine, trace cos >= {n.trace_threshold:g})",
        f"{n.f1:.3f} ({n.n_matched} matched, precision {n.precision:.3f}, recall {n.recall:.3f})",
    )
    if a is not None:
        table.add_row("alignment error median / 95% (px)", f"{a.median_px:.2f} / {a.p95_px:.2f}")
        table.add_row("unaligned median / 95% (px)", f"{a.unaligned_median_px:.2f} / {a.unaligned_p95_px:.2f}")
    console.print(table)
    json_out = json_out if json_out is not None else result / "score.json"
    json_out.write_text(json.dumps(scores.as_dict(), indent=1))
    console.print(f"[green]wrote[/green] {json_out}")


@app.command()
def info(
    path: Annotated[Path, typer.Argument(help="A video, a folder of videos, or a manifest.")],
    dataset: Annotated[str | None, typer.Option(help="Array inside HDF5/zarr/NWB files.")] = None,
) -> None:
    """Show the sessions, files, frame counts and frame sizes caliali would read."""
    from rich.table import Table

    from caliali.experiment import load_experiment
    from caliali.io import open_video

    experiment = load_experiment(path, dataset=dataset)
    table = Table("session", "file", "frames", "size", "dtype")
    for session in experiment.sessions:
        for file in session.files:
            with open_video(file, dataset=session.dataset) as video:
                h, w = video.frame_shape
                table.add_row(session.id, file.name, str(video.n_frames), f"{h}x{w}", str(video.dtype))
    console.print(table)


@app.command()
def run(
    input: Annotated[Path, typer.Option("--input", help="Experiment: folder of session videos, manifest, or video.")],
    output: Annotated[Path, typer.Option("--output", help="Folder for results (arrays, NWB, QC, alignment).")],
    config: Annotated[
        Path | None,
        typer.Option(
            "--config", help="A YAML/JSON file of parameters, or the parameters as JSON text (defaults if omitted)."
        ),
    ] = None,
    work: Annotated[
        Path | None,
        typer.Option(help="Intermediates folder, also for extraction's temporary trace files (default <output>/work)."),
    ] = None,
) -> None:
    """Run the whole pipeline: motion correction, projections, alignment, CNMF-E, outputs. Resumable."""
    from caliali.allocator import large_arrays_returned_on_free
    from caliali.chunking import print_progress
    from caliali.config import load_config
    from caliali.pipeline import run as run_pipeline

    global _traceback_dir
    load_config(config)  # refused before anything runs, naming the field
    _traceback_dir = output
    # This process is the run's own: freed long traces must not leave glibc's heaps keeping batch temporaries.
    large_arrays_returned_on_free()
    # the file itself, not its parsed values: its hash is taken as written (fs: 25 stays 25), as ncaas does
    result = run_pipeline(input, output, config=config, work=work, progress=print_progress)
    frames = ", ".join(f"{s}: {n}" for s, n in zip(result.sessions, result.session_frames))
    console.print(
        f"[green]done[/green]: {result.n_neurons} neurons across {len(result.sessions)} session(s) "
        f"({frames} frames) -> {result.out}"
    )
    if result.fs:
        console.print(f"  frame rate {result.fs['fs']:g} Hz, {result.fs['fs_from']}", highlight=False)
        if result.fs.get("fs_note"):
            console.print(f"  note: {result.fs['fs_note']}", highlight=False)
    if result.convergence:
        console.print(f"  extraction {result.convergence['why']}", highlight=False)
    for name, info in result.stages.items():
        console.print(f"  {name:<12} {info['seconds']:8.1f} s   peak RSS {info['peak_rss_mb']:8.0f} MB")


@app.command()
def curate(
    result: Annotated[Path, typer.Option("--result", help="Outputs folder of a caliali run (read only).")],
    decisions: Annotated[Path, typer.Option("--decisions", help="Decisions file of a review (ncaas-review/1).")],
    output: Annotated[Path, typer.Option("--output", help="Folder for the curated result.")],
) -> None:
    """Apply a review's decisions (reject, accept, merge) to a run's result: a new result, same layout."""
    from caliali.curate import curate as run_curate

    global _traceback_dir
    _traceback_dir = output
    curation = run_curate(result, decisions, output)
    statuses = [n["status"] for n in curation["neurons"]]
    console.print(
        f"[green]curated[/green]: {len(statuses)} neurons ({statuses.count('accepted')} accepted, "
        f"{statuses.count('unreviewed')} unreviewed, {statuses.count('merged')} merged) -> {output}",
        highlight=False,
    )


def main() -> None:
    """Entry point: run the app, rendering caliali errors as one-line messages."""
    try:
        app()
    except CalialiError as exc:
        _fail(str(exc), exc.exit_code)
    except Exception as exc:  # a fault of caliali's, not of the input: still one line
        if isinstance(exc, OSError) and exc.errno in _DISK_FULL:  # the machine's, not caliali's
            if exc.filename:
                writing = f" writing {exc.filename}"
            else:
                writing = " writing the run's outputs or intermediates" + (
                    f" (output {_traceback_dir})" if _traceback_dir is not None else ""
                )
            _fail(
                f"no space left on the disk{writing}: free space there, or give --output and --work folders "
                "on a disk with room, and run again (the stages already done are kept and not redone)",
                1,
            )
        where = _save_traceback()
        message = " ".join(str(exc).split()) or "no message"
        _fail(
            f"caliali failed unexpectedly ({type(exc).__name__}: {message}); "
            f"this is a bug in caliali, please report it with the traceback in {where}",
            1,
        )


_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)  # no space left, disk quota exceeded


def _fail(message: str, code: int) -> None:
    """Say why the run failed, on stderr and to the platform, and exit with ``code``."""
    errors.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)  # brackets are text
    tell_platform(message)
    sys.exit(code)


def tell_platform(message: str) -> None:
    """Write the one-line reason to ``NCAAS_ERROR_FILE`` when a platform gave one (best effort:
    failing to tell it never hides the error itself)."""
    path = os.environ.get("NCAAS_ERROR_FILE")
    if not path:
        return
    try:
        Path(path).write_text(" ".join(message.split()) + "\n", encoding="utf-8")
    except OSError:
        pass


def _save_traceback() -> Path:
    """Write the exception being handled to ``traceback.txt`` (output folder, else a temporary file)."""
    text = traceback.format_exc()
    if _traceback_dir is not None:
        try:
            _traceback_dir.mkdir(parents=True, exist_ok=True)
            path = _traceback_dir / "traceback.txt"
            path.write_text(text)
            return path
        except OSError:
            pass
    handle, name = tempfile.mkstemp(prefix="caliali-traceback-", suffix=".txt")
    with os.fdopen(handle, "w") as out:
        out.write(text)
    return Path(name)
