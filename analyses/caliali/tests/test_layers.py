"""The layers import downwards only: io (the lowest) uses nothing of caliali above it; process-wide
allocator tuning happens only at the ``caliali run`` entry point."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import caliali

PACKAGE = Path(caliali.__file__).parent
# What the readers and writers may use: the exceptions, the memory-budget arithmetic and OpenCV as
# caliali sets it up (without IPP, for reproducible bits).
BELOW_IO = {"caliali", "caliali.exceptions", "caliali.budget", "caliali._cv2"}


def _caliali_imports(path: Path) -> set[str]:
    """Every caliali module a file imports, at the top or inside a function."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {n for n in names if n == "caliali" or n.startswith("caliali.")}


def test_io_imports_nothing_above_it():
    for path in sorted((PACKAGE / "io").glob("*.py")):
        above = {n for n in _caliali_imports(path) if n not in BELOW_IO and not n.startswith("caliali.io")}
        assert not above, f"{path.name} imports {sorted(above)}, a layer above io"
    assert _caliali_imports(PACKAGE / "budget.py") <= {"caliali.exceptions"}
    assert _caliali_imports(PACKAGE / "_cv2.py") == set()


def test_importing_io_loads_no_higher_layer():
    code = "import sys, caliali.io; print(' '.join(m for m in sys.modules if m.startswith('caliali')))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    above = [m for m in loaded if m not in BELOW_IO and not m.startswith("caliali.io")]
    assert not above, f"importing caliali.io loads {above}"


def test_only_the_run_entry_point_tunes_the_allocator():
    callers = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "large_arrays_returned_on_free":
                callers.append(path.relative_to(PACKAGE).as_posix())
    assert callers == ["cli.py"]
