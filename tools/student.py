"""Write student copies of the chapters: solutions removed, outputs cleared.

    python tools/student.py notebooks/*.ipynb --out student      # what `make student` runs

In each chapter, everything between a ```` ```{solution-start} ```` fence and its
```` ```{solution-end} ```` fence is dropped -- the explanation in markdown cells and the code
cells in between -- and each solution's code is replaced by one stub cell that names the exercise.
Any other code cell tagged ``solution`` becomes a stub too. Every code cell's outputs and
execution count are cleared, so students start from a clean notebook.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import nbformat

START = re.compile(r"```\{solution-start\}\s*(\S+)[^`]*?```", re.S)
END = re.compile(r"```\{solution-end\}\s*```", re.S)


def _stub(label: str) -> nbformat.NotebookNode:
    cell = nbformat.v4.new_code_cell(f"# Exercise {label}: write your solution here.\n")
    cell.metadata["tags"] = ["exercise-stub"]
    return cell


def strip_solutions(nb: nbformat.NotebookNode) -> tuple[nbformat.NotebookNode, int]:
    """Return a copy of ``nb`` without solutions, and the number of solutions removed."""
    cells: list = []
    label, stubbed, removed = None, False, 0  # label: the solution we are inside, if any

    def keep_markdown(text: str, metadata) -> None:
        if text.strip():
            cell = nbformat.v4.new_markdown_cell(text.strip())
            cell.metadata = metadata
            cells.append(cell)

    for cell in nb.cells:
        if cell.cell_type == "markdown":
            text = cell.source
            while text:
                if label is None:
                    match = START.search(text)
                    if not match:
                        keep_markdown(text, cell.metadata)
                        break
                    keep_markdown(text[:match.start()], cell.metadata)
                    label, stubbed, text = match.group(1), False, text[match.end():]
                else:
                    match = END.search(text)
                    if not match:
                        break  # the rest of this cell is solution prose
                    if not stubbed:
                        cells.append(_stub(label))
                    label, removed, text = None, removed + 1, text[match.end():]
        elif label is not None:
            if not stubbed:
                cells.append(_stub(label))
                stubbed = True
        elif "solution" in cell.metadata.get("tags", []):
            cells.append(_stub("above"))
            removed += 1
        else:
            cells.append(cell)
    if label is not None:
        raise ValueError(f"solution {label!r} has no solution-end fence")
    out = nbformat.v4.new_notebook(cells=cells, metadata=nb.metadata)
    for cell in out.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    return out, removed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=Path("student"))
    args = parser.parse_args(argv)
    (args.out / "notebooks").mkdir(parents=True, exist_ok=True)
    for path in args.notebooks:
        nb, removed = strip_solutions(nbformat.read(path, as_version=4))
        nbformat.write(nb, args.out / "notebooks" / path.name)
        print(f"{path.name}: {removed} solution(s) removed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
