"""Reading-length statistics of the chapters, and the book's column limit.

    python tools/nbstats.py notebooks/*.ipynb            # table: cells, median, longest, widest
    python tools/nbstats.py --check notebooks/*.ipynb    # also exit 1 if a line is too wide

Per chapter: the number of code cells, the median and the longest cell in non-blank lines, the
widest code line and the widest line of stored text output (stream, plain-text results and
errors), in characters. The book's content column holds about 80 characters of code; a wider
line gets a horizontal scrollbar, so ``--check`` fails on any code or text-output line over
``--width`` (default 80). The first cell (the guarded Colab install) is counted like any other.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path


def _text_outputs(cell) -> list[str]:
    """The lines of text output the book shows (none for a cell tagged ``remove-output``)."""
    if "remove-output" in cell.get("metadata", {}).get("tags", []):
        return []
    lines = []
    for out in cell.get("outputs", []):
        if out.get("output_type") == "stream":
            text = out.get("text", "")
        elif out.get("output_type") in ("execute_result", "display_data"):
            text = out.get("data", {}).get("text/plain", "")
            rich = ("image/png", "text/html", "application/vnd.jupyter.widget-view+json")
            if any(kind in out.get("data", {}) for kind in rich):
                text = ""  # a figure or a widget: its text repr is not shown in the book
        else:
            continue
        text = "".join(text) if isinstance(text, list) else text
        lines += text.splitlines()
    return lines


def chapter_stats(path: Path) -> dict:
    """``{"cells", "median", "longest", "code_width", "output_width", "wide"}`` of one notebook."""
    cells = [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
    lengths, wide, code_width, output_width = [], [], 0, 0
    for index, cell in enumerate(cells):
        source = "".join(cell["source"]).splitlines()
        lengths.append(sum(1 for line in source if line.strip()))
        for kind, lines in (("code", source), ("output", _text_outputs(cell))):
            for line in lines:
                width = len(line)
                if kind == "code":
                    code_width = max(code_width, width)
                else:
                    output_width = max(output_width, width)
                wide.append((width, kind, index, line))
    return {"cells": len(cells), "median": statistics.median(lengths) if lengths else 0,
            "longest": max(lengths, default=0), "code_width": code_width,
            "output_width": output_width, "wide": wide}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("--check", action="store_true", help="exit 1 if a line is too wide")
    parser.add_argument("--width", type=int, default=80)
    args = parser.parse_args(argv)
    print(f"{'chapter':36s} {'cells':>5s} {'median':>6s} {'longest':>7s} {'code w':>6s} "
          f"{'out w':>6s}")
    too_wide = []
    for path in args.notebooks:
        s = chapter_stats(path)
        print(f"{path.stem:36s} {s['cells']:5d} {s['median']:6g} {s['longest']:7d} "
              f"{s['code_width']:6d} {s['output_width']:6d}")
        too_wide += [(path.name, *w) for w in s["wide"] if w[0] > args.width]
    for name, width, kind, index, line in too_wide:
        print(f"{name}: code cell {index}: {kind} line of {width} > {args.width}: {line[:60]}...")
    return 1 if args.check and too_wide else 0


if __name__ == "__main__":
    sys.exit(main())
