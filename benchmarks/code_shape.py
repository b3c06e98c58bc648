"""The shape of the platform's code: lines and modules per package, and its longest functions.

Run from the repository (``.venv/bin/python benchmarks/code_shape.py``); ``--src`` measures
another checkout (say, an older commit in a git worktree). Lines are counted as the files
stand, so compare trees formatted the same way (``ruff format``).
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

from rich.console import Console
from rich.table import Table


def packages(src: Path) -> dict[str, tuple[int, int]]:
    """(lines, modules) per package folder under ``src``, the top level as ``.``."""
    out: dict[str, tuple[int, int]] = {}
    for file in sorted(src.rglob("*.py")):
        key = str(file.parent.relative_to(src)) if file.parent != src else "."
        lines, modules = out.get(key, (0, 0))
        out[key] = (lines + len(file.read_text().splitlines()), modules + 1)
    return out


def longest_functions(src: Path, count: int) -> list[tuple[int, str]]:
    """The ``count`` longest functions (lines, ``module:name``), nested ones included."""
    found = []
    for file in src.rglob("*.py"):
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                found.append((node.end_lineno - node.lineno + 1, f"{file.relative_to(src)}:{node.name}"))
    return sorted(found, reverse=True)[:count]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, default=Path(__file__).resolve().parents[1] / "src" / "ncaas")
    parser.add_argument("--functions", type=int, default=8, help="longest functions listed")
    args = parser.parse_args()
    out = Console()
    table = Table("package", "lines", "modules", title=f"{args.src}")
    per = packages(args.src)
    for key, (lines, modules) in per.items():
        table.add_row(key, f"{lines:,}", str(modules))
    table.add_row("total", f"{sum(v[0] for v in per.values()):,}", str(sum(v[1] for v in per.values())))
    out.print(table)
    longest = Table("lines", "function", title="longest functions")
    for lines, name in longest_functions(args.src, args.functions):
        longest.add_row(str(lines), name)
    out.print(longest)


if __name__ == "__main__":
    main()
