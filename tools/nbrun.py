"""Execute chapter notebooks top to bottom in a fresh kernel and store their outputs.

    python tools/nbrun.py notebooks/01_tasks_data_metrics.ipynb   # one chapter
    python tools/nbrun.py notebooks/*.ipynb                       # every chapter, timing table

This is how stored outputs are produced before a commit (the book renders them and
``pytest --nbval`` reproduces them). Each notebook runs in its own directory, as nbval runs it.
After execution the outputs are tidied so they read well in the book and on GitHub:

- consecutive stream outputs are merged and carriage returns applied, so a text progress bar is
  stored as its final state instead of hundreds of partial redraws;
- execution timing metadata and widget state are dropped (they change on every run).

It prints one row per notebook with its wall time: the course's timing table. With
``--time-only`` the notebooks are executed and timed but not rewritten (to measure a machine
without touching the stored outputs).
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

_CARRIAGE_RETURN = re.compile(r"[^\n]*\r(?=[^\n])")  # text a later \r on the same line overwrites
_BACKSPACE = re.compile(r"[^\n]\x08")  # a character erased by a backspace


def tidy_outputs(nb: nbformat.NotebookNode) -> None:
    for cell in nb.cells:
        cell.get("metadata", {}).pop("execution", None)
        if cell.cell_type != "code":
            continue
        merged = []
        for out in cell.outputs:
            if (out.output_type == "stream" and merged and merged[-1].output_type == "stream"
                    and merged[-1].name == out.name):
                merged[-1].text += out.text
            else:
                merged.append(out)
        for out in merged:
            if out.output_type == "stream":
                text = out.text
                while _BACKSPACE.search(text):
                    text = _BACKSPACE.sub("", text)
                text = _CARRIAGE_RETURN.sub("", text).replace("\r\n", "\n").replace("\r", "")
                out.text = text
        cell.outputs = merged
    nb.metadata.pop("widgets", None)


def run_notebook(path: Path, timeout: int = 600, write: bool = True) -> float:
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    start = time.perf_counter()
    client.execute()
    elapsed = time.perf_counter() - start
    if not write:
        return elapsed
    tidy_outputs(nb)
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python",
                                 "name": "python3"}
    nbformat.write(nb, path)
    return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("--timeout", type=int, default=600, help="seconds per cell")
    parser.add_argument("--time-only", action="store_true",
                        help="execute and time, but do not store the outputs")
    args = parser.parse_args(argv)
    rows = []
    for path in args.notebooks:
        print(f"running {path} ...", flush=True)
        rows.append((path.name, run_notebook(path, args.timeout, write=not args.time_only)))
    width = max(len(name) for name, _ in rows)
    print(f"\n{'notebook':<{width}}  seconds")
    for name, seconds in rows:
        print(f"{name:<{width}}  {seconds:7.1f}")
    print(f"{'total':<{width}}  {sum(s for _, s in rows):7.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
