"""Keep lab notebooks clean in git: outputs cleared except the cells nbval compares.

    python -m quantlab.notebooks refresh labs/01_linear_quantization.ipynb   # execute, keep check outputs
    python -m quantlab.notebooks clean labs/*.ipynb                           # clear without executing
    python -m quantlab.notebooks verify labs/*.ipynb                          # exit 1 if not clean

A cell tagged ``nbval-check-output`` (cell metadata, out of the learner's sight) keeps its (executed) output, which
``pytest --nbval-lax`` then compares; every other cell is committed without outputs or execution count,
and the notebook carries no saved widget state (it would reopen as "Error displaying widget").
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat

TAG = "nbval-check-output"

__all__ = ["is_checked", "clean", "problems", "refresh"]


def is_checked(cell) -> bool:
    """True for a code cell whose output nbval compares (tagged ``nbval-check-output``)."""
    return cell.cell_type == "code" and TAG in cell.get("metadata", {}).get("tags", [])


def clean(nb, keep_checked: bool = True):
    """Strip outputs, execution counts and widget state (in place); checked cells keep theirs."""
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        cell.metadata.pop("execution", None)
        if keep_checked and is_checked(cell) and cell.get("outputs"):
            continue
        cell.outputs = []
        cell.execution_count = None
    return nb


def problems(nb) -> list[str]:
    """What would make a committed notebook unclean (empty list = clean)."""
    out = []
    if "widgets" in nb.metadata:
        out.append("saved widget state in metadata")
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        if is_checked(cell):
            if not cell.get("outputs"):
                out.append(f"cell {i}: nbval-check-output cell has no stored output (run refresh)")
            elif any(o.get("output_type") == "error" for o in cell.outputs):
                out.append(f"cell {i}: stored output is an error")
        elif cell.get("outputs") or cell.get("execution_count") is not None:
            out.append(f"cell {i}: has outputs or an execution count")
    return out


def refresh(path: str | Path, timeout: int = 300) -> None:
    """Execute the notebook in its folder, then keep only the checked cells' outputs."""
    from nbclient import NotebookClient

    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    resources = {"metadata": {"path": str(path.parent)}}
    NotebookClient(nb, timeout=timeout, kernel_name="python3", resources=resources).execute()
    nbformat.write(clean(nb), path)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) < 2 or argv[0] not in {"refresh", "clean", "verify"}:
        print(__doc__)
        return 2
    cmd, paths = argv[0], argv[1:]
    bad = 0
    for p in paths:
        if cmd == "refresh":
            refresh(p)
        nb = nbformat.read(p, as_version=4)
        if cmd == "clean":
            nbformat.write(clean(nb), p)
        issues = problems(nb)
        for msg in issues:
            print(f"{p}: {msg}")
        bad += bool(issues)
    return 1 if (bad and cmd == "verify") else 0


if __name__ == "__main__":
    raise SystemExit(main())
