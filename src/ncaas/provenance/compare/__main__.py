"""``python -m ncaas.provenance.compare REQUEST``: one comparison, in the platform's sandbox.

REQUEST is JSON: ``{"a": path, "b": path, "kind": ..., "rtol": ..., "atol": ..., "ignore": [...]}``.
The answer is one line of JSON on stdout: ``{"equal": bool, "exact": bool, "detail": str}``; a file that
cannot be read gives ``{"error": "..."}`` (in words, never a traceback).
"""

import json
import sys
import warnings
from pathlib import Path

from . import Rule, compare_files


def main(argv: list[str]) -> int:
    request = json.loads(argv[0])
    rule = Rule(request["kind"], request.get("rtol", 0.0), request.get("atol", 0.0), tuple(request.get("ignore", ())))
    answer: dict[str, object]
    warnings.simplefilter("error")  # a decompression-bomb warning, say, stops the comparison
    try:
        outcome = compare_files(Path(request["a"]), Path(request["b"]), rule)
    except MemoryError:
        answer = {"error": "it needs more memory than a comparison may use"}
    except Exception as exc:  # noqa: BLE001 - whatever a malformed file raises becomes its verdict
        answer = {"error": _reason(exc)}
    else:
        answer = {"equal": outcome.equal, "exact": outcome.exact, "detail": outcome.detail}
    print(json.dumps(answer), flush=True)
    return 0


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:300]


sys.exit(main(sys.argv[1:]))
