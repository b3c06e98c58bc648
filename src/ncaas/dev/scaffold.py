"""``ncaas dev new NAME``: an analysis folder that runs at once.

::

    NAME/
      blueprint.yaml        how the platform runs it (command, resources, config schema, access)
      pyproject.toml        the analysis package (its dependencies go here; then `ncaas env lock NAME`)
      requirements.lock     the hashed lock of those dependencies
      src/<module>/         the entry point: python -m <module> INPUT --config CONFIG --out OUTPUT
      config.yaml           a sample config
      sample/               a sample dataset
      tests/test_<module>.py   runs the entry point on the sample (pytest)

The example analysis uses the standard library only: for every file of its dataset it writes the
size, line count and sha256 (``files.csv``) and a ``summary.json``, and reports progress the way
the platform reads it.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..exceptions import NcaasError

__all__ = ["module_name", "scaffold"]

_NAME = re.compile(r"^[a-z][a-z0-9-]{0,40}$")

BLUEPRINT = """\
# {name}: how ncaas runs this analysis. Check it with `ncaas blueprint validate blueprint.yaml`.
name: {name}
version: 0.1.0
description: Per-file size, line count and sha256 of a dataset (a new analysis; describe yours here).
environment:
  source: .                    # the analysis package (pyproject.toml)
  lock: requirements.lock      # its hashed lock: `ncaas env lock {name}` after changing dependencies
command: ["{{python}}", "-m", "{module}", "{{input}}", "--config", "{{config}}", "--out", "{{output}}"]
resources:
  cpus: 1
  memory: 1GiB
  timeout: 10m
access:
  groups: ["*"]                # or the groups allowed to run it
limits:
  max_concurrent_tasks: 8
  max_retries: 1
config_schema:
  type: object
  additionalProperties: false
  properties:
    count_lines: {{type: boolean, description: count the lines of each file}}
    max_files: {{type: integer, minimum: 1, description: most files described}}
default_config:
  count_lines: true
  max_files: 1000
"""

PYPROJECT = """\
[build-system]
requires = ["hatchling>=1.25"]
build-backend = "hatchling.build"

[project]
name = "{name}"
version = "0.1.0"
description = "An ncaas analysis."
requires-python = ">=3.11"
dependencies = []  # e.g. ["numpy>=1.26"]; then regenerate the lock: ncaas env lock {name}

[tool.hatch.build.targets.wheel]
packages = ["src/{module}"]
"""

MAIN = '''\
"""``python -m {module} INPUT --config CONFIG --out OUTPUT``: what ncaas runs (see blueprint.yaml).

INPUT is one dataset (a file, or a folder); CONFIG the job's config as JSON (the blueprint's
defaults filled in); OUTPUT the folder to write into. Progress is a line
``NCAAS_PROGRESS <fraction> <message>``; a failure writes one line saying what is wrong and how
to fix it into the file named by NCAAS_ERROR_FILE, then exits non-zero.
"""

import argparse
import csv
import hashlib
import json
import os
import sys
from pathlib import Path


def fail(reason: str) -> None:
    where = os.environ.get("NCAAS_ERROR_FILE")
    if where:
        Path(where).write_text(reason + "\\n")
    print(f"error: {{reason}}", file=sys.stderr)
    sys.exit(2)


def describe(path: Path, count_lines: bool) -> dict:
    data = path.read_bytes()
    return {{
        "size": len(data),
        "lines": data.count(b"\\n") if count_lines else None,
        "sha256": hashlib.sha256(data).hexdigest(),
    }}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="{module}")
    parser.add_argument("input", type=Path)
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    config = json.loads(args.config.read_text())
    files = sorted(p for p in args.input.rglob("*") if p.is_file()) if args.input.is_dir() else [args.input]
    if not files:
        fail(f"{{args.input.name}} holds no file; give a file or a folder with files")
    files = files[: config["max_files"]]
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, path in enumerate(files):
        rows.append({{"file": str(path.relative_to(args.input)) if args.input.is_dir() else path.name,
                     **describe(path, config["count_lines"])}})
        print(f"NCAAS_PROGRESS {{(i + 1) / len(files):.3f}} {{path.name}}", flush=True)
    with open(args.out / "files.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["file", "size", "lines", "sha256"])
        writer.writeheader()
        writer.writerows(rows)
    summary = {{"files": len(rows), "bytes": sum(r["size"] for r in rows)}}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1, sort_keys=True) + "\\n")
    print(f"done: {{len(rows)}} file(s), {{summary['bytes']}} bytes")


if __name__ == "__main__":
    main()
'''

TEST = '''\
"""Runs the entry point on the sample dataset, as the platform would (``pytest tests``)."""

import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]


def test_the_sample_is_described(tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({{"count_lines": True, "max_files": 1000}}))
    env = {{**os.environ, "PYTHONPATH": str(HERE / "src")}}
    argv = ["-m", "{module}", str(HERE / "sample"), "--config", str(config), "--out", str(tmp_path / "out")]
    done = subprocess.run([sys.executable, *argv], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary == {{"files": 2, "bytes": 31}}
'''

CONFIG = "# a sample config: every option of blueprint.yaml's config_schema\ncount_lines: true\nmax_files: 100\n"
SAMPLE = {"notes.txt": "first line\nsecond line\n", "data.csv": "a,b\n1,2\n"}


def module_name(name: str) -> str:
    return name.replace("-", "_")


def scaffold(name: str, parent: Path) -> Path:
    """Write the folder of a new analysis ``name`` under ``parent``; its path. The lock is made by the caller."""
    if not _NAME.match(name):
        raise NcaasError(
            f"{name!r} is not an analysis name: start with a lower-case letter, then letters, digits or '-' "
            "(at most 41 characters), e.g. spike-count"
        )
    folder = parent / name
    if folder.exists():
        raise NcaasError(f"{folder} already exists; choose another name or remove it")
    module = module_name(name)
    files = {
        "blueprint.yaml": BLUEPRINT.format(name=name, module=module),
        "pyproject.toml": PYPROJECT.format(name=name, module=module),
        f"src/{module}/__init__.py": f'"""{name}: an ncaas analysis."""\n',
        f"src/{module}/__main__.py": MAIN.format(module=module),
        "config.yaml": CONFIG,
        f"tests/test_{module}.py": TEST.format(module=module),
        **{f"sample/{k}": v for k, v in SAMPLE.items()},
        ".gitignore": ".ncaas-dev/\n__pycache__/\n",
    }
    for rel, text in files.items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return folder
