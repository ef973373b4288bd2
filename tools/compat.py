"""Prove a Python / torch / numpy combination: a fresh venv, the unit tests, the chapters.

    python tools/compat.py --python 3.10 --torch 2.1.2 --numpy 1.26.4
    python tools/compat.py --python 3.13 --torch 2.15.0 --numpy 2.4.6 --notebooks
    python tools/compat.py --python 3.11 --torch 2.13.0 --numpy 2.1.3 \\
        --torch-index https://download.pytorch.org/whl/cpu        # CPU wheels, no CUDA build

Steps, each in a scratch folder ``<scratch>/<tag>`` (by default
``/tmp/segcourse-compat/py3.10-torch2.1.2-np1.26.4``):

1. ``python3.X -m venv``: the interpreter is ``--python-exe`` if given, else a pyenv build
   (``~/.pyenv/versions/3.X.*``), else ``python3.X`` on PATH;
2. ``pip install torch==T`` (from ``--torch-index`` if given), then ``numpy==N``;
3. ``pip install -e .[test,deploy]`` of this checkout under a constraints file that pins torch
   and numpy (and ``--transformers`` if given), so nothing upgrades what step 2 chose. The
   constraints file is passed as ``PIP_CONSTRAINT``, which also replaces a machine-wide pip
   constraint (a cap on torch) for this venv only;
4. ``pytest -q -p no:cacheprovider tests`` and, with ``--notebooks``, ``pytest --nbval notebooks``,
   with ``OMP_NUM_THREADS=1`` unless the caller set it;
5. one summary line (python, torch, numpy, transformers, passed/failed/errors, seconds), also
   appended as JSON to ``<scratch>/results.jsonl``; the venv is deleted unless ``--keep``.

Every command's output goes to ``<scratch>/<tag>/log.txt`` (pytest's failures are listed with
``-rfE``). ``--dry-run`` prints the commands and installs nothing. Exit status: 0 when every
test run passed, 1 when a test failed, 2 when the environment could not be built.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_SCRATCH = Path("/tmp/segcourse-compat")
PYENV_ROOT = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
_VERSION = re.compile(r"^\d+(\.\d+)*([a-z0-9.+]*)$")


def _version_arg(what: str):
    def parse(text: str) -> str:
        if not _VERSION.match(text):
            raise argparse.ArgumentTypeError(
                f"{what} must be a version such as 2.1.2, got {text!r}")
        return text
    return parse


def _python_arg(text: str) -> str:
    if not re.fullmatch(r"3\.\d+", text):
        raise argparse.ArgumentTypeError(f"--python must be MAJOR.MINOR such as 3.10, got {text!r}")
    return text


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Build a venv for one Python/torch/numpy and run segcourse's tests in it.")
    p.add_argument("--python", required=True, type=_python_arg, help="e.g. 3.10")
    p.add_argument("--python-exe", type=Path, help="interpreter to use instead of searching")
    p.add_argument("--torch", required=True, type=_version_arg("--torch"), help="e.g. 2.1.2")
    p.add_argument("--numpy", required=True, type=_version_arg("--numpy"), help="e.g. 1.26.4")
    p.add_argument("--transformers", metavar="SPEC",
                   help="pin or range for transformers, e.g. '==4.46.3' or '<5' (default: "
                        "whatever pip resolves)")
    p.add_argument("--torch-index", metavar="URL",
                   help="index for torch only, e.g. https://download.pytorch.org/whl/cpu")
    p.add_argument("--notebooks", action="store_true", help="also run pytest --nbval notebooks")
    p.add_argument("--keep", action="store_true", help="keep the venv afterwards")
    p.add_argument("--scratch", type=Path, default=DEFAULT_SCRATCH, help="scratch folder")
    p.add_argument("--tag", help="sub-folder name (default from the versions)")
    p.add_argument("--repo", type=Path, default=REPO, help="checkout to test (default: this one)")
    p.add_argument("--pytest-args", default="", help="extra pytest arguments, one string")
    p.add_argument("--dry-run", action="store_true", help="print the commands, install nothing")
    args = p.parse_args(argv)
    if args.transformers is not None and not re.fullmatch(r"(==|>=|<=|<|>|~=|!=)\S+",
                                                          args.transformers):
        p.error(f"--transformers must be a specifier such as '==4.46.3' or '<5', "
                f"got {args.transformers!r}")
    if args.tag is None:
        args.tag = f"py{args.python}-torch{args.torch}-np{args.numpy}"
        if args.transformers:
            spec = args.transformers.replace("<", "lt").replace(">", "gt").replace("!", "ne")
            args.tag += "-tf" + re.sub(r"[^0-9A-Za-z.]", "", spec)  # "<5" -> -tflt5
    if not re.fullmatch(r"[0-9A-Za-z._+-]+", args.tag):
        p.error(f"--tag must be a plain folder name, got {args.tag!r}")
    return args


def find_python(version: str, exe: Path | None = None, pyenv_root: Path = PYENV_ROOT) -> Path:
    """The interpreter for ``version`` (``3.X``): ``exe``, a pyenv build, or ``python3.X``."""
    if exe is not None:
        return Path(exe)
    builds = sorted(pyenv_root.glob(f"versions/{version}.*/bin/python"),
                    key=lambda p: [int(x) if x.isdigit() else -1
                                   for x in p.parent.parent.name.split(".")])
    if builds:
        return builds[-1]
    found = shutil.which(f"python{version}")
    if found is None:
        raise SystemExit(f"no Python {version}: not in {pyenv_root}/versions and no "
                         f"python{version} on PATH; pass --python-exe PATH")
    return Path(found)


def constraints_text(args: argparse.Namespace) -> str:
    """What the constraints file pins: torch and numpy exactly, transformers if asked."""
    lines = [f"torch=={args.torch}", f"numpy=={args.numpy}"]
    if args.transformers:
        lines.append(f"transformers{args.transformers}")
    return "\n".join(lines) + "\n"


def plan(args: argparse.Namespace, python: Path) -> list[tuple[str, list[str]]]:
    """The (step name, command) list that builds the venv and runs the tests, in order."""
    work = args.scratch / args.tag
    venv = work / "venv"
    vpy = str(venv / "bin" / "python")
    pip = [vpy, "-m", "pip", "install", "--quiet"]
    torch = pip + [f"torch=={args.torch}"]
    if args.torch_index:
        torch += ["--index-url", args.torch_index]
    extra = args.pytest_args.split()
    steps = [
        ("venv", [str(python), "-m", "venv", str(venv)]),
        ("pip", pip + ["--upgrade", "pip"]),
        ("torch", torch),
        ("numpy", pip + [f"numpy=={args.numpy}"]),
        # the extras `make test` installs: test, and deploy for chapter 12 (onnx, onnxruntime)
        ("segcourse", pip + ["-e", f"{args.repo}[test,deploy]"]),
        ("versions", [vpy, "-c", VERSIONS_SNIPPET]),
        ("unit", [vpy, "-m", "pytest", "-q", "-rfE", "-p", "no:cacheprovider", "tests"] + extra),
    ]
    if args.notebooks:
        steps.append(("notebooks", [vpy, "-m", "pytest", "-q", "-rfE", "-p", "no:cacheprovider",
                                    "--nbval", "notebooks"] + extra))
    return steps


VERSIONS_SNIPPET = (
    "import json, platform, numpy, torch\n"
    "try:\n    import transformers; tf = transformers.__version__\n"
    "    if not transformers.utils.is_torch_available(): tf += ' (refuses this torch)'\n"
    "except Exception as e:\n    tf = f'not importable ({type(e).__name__})'\n"
    "print(json.dumps({'python': platform.python_version(), 'torch': torch.__version__,"
    " 'numpy': numpy.__version__, 'transformers': tf}))"
)


def environment(args: argparse.Namespace, constraints: Path) -> dict[str, str]:
    """The environment of every step: the constraints file, one BLAS thread, no user site."""
    env = dict(os.environ)
    env["PIP_CONSTRAINT"] = str(constraints)
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("COLUMNS", "240")  # pytest's -rfE lines whole, with the error message
    env["PYTHONNOUSERSITE"] = "1"
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env.pop("VIRTUAL_ENV", None)
    return env


_COUNT = re.compile(r"(\d+) (passed|failed|errors?|skipped|xfailed|xpassed|deselected)")


def parse_pytest(output: str) -> dict[str, int]:
    """Counts from pytest's closing line, e.g. '3 failed, 290 passed, 1 error in 80.1s'."""
    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0}
    for line in reversed(output.strip().splitlines()):
        found = _COUNT.findall(line)
        if found and re.search(r"\bin [\d.]+s", line):
            for n, kind in found:
                kind = "errors" if kind.startswith("error") else kind
                counts[kind] = counts.get(kind, 0) + int(n)
            return counts
    counts["errors"] = -1  # no closing line: pytest did not get to run
    return counts


def failures(output: str) -> list[str]:
    """The 'FAILED tests/x.py::test - Error: msg' and 'ERROR ...' lines of ``-rfE``."""
    return [line for line in output.splitlines() if line.startswith(("FAILED ", "ERROR "))]


def summary_line(info: dict) -> str:
    parts = [f"python {info.get('python', '?')}", f"torch {info.get('torch', '?')}",
             f"numpy {info.get('numpy', '?')}", f"transformers {info.get('transformers', '?')}"]
    for name in ("unit", "notebooks"):
        c = info.get(name)
        if c is not None:
            parts.append(f"{name}: {c['passed']} passed, {c['failed']} failed, "
                         f"{c['errors']} errors")
    if info.get("broken"):
        parts.append(f"environment failed at step {info['broken']}")
    parts.append(f"{info.get('seconds', 0):.0f} s")
    return "compat: " + " | ".join(parts)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    python = find_python(args.python, args.python_exe)
    steps = plan(args, python)
    work = args.scratch / args.tag
    constraints = work / "constraints.txt"
    if args.dry_run:
        print(f"# constraints ({constraints}):")
        print("".join(f"#   {line}\n" for line in constraints_text(args).splitlines()), end="")
        for name, cmd in steps:
            print(f"{name}: {subprocess.list2cmdline(cmd)}")
        return 0
    if (work / "venv").exists():
        shutil.rmtree(work / "venv")
    work.mkdir(parents=True, exist_ok=True)
    constraints.write_text(constraints_text(args))
    env = environment(args, constraints)
    info: dict = {"tag": args.tag, "requested": {"python": args.python, "torch": args.torch,
                                                 "numpy": args.numpy,
                                                 "transformers": args.transformers}}
    start = time.monotonic()
    status = 0
    with open(work / "log.txt", "w") as log:
        for name, cmd in steps:
            log.write(f"\n$ {subprocess.list2cmdline(cmd)}\n")
            log.flush()
            t0 = time.monotonic()
            proc = subprocess.run(cmd, cwd=args.repo, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True)
            log.write(proc.stdout)
            log.write(f"[{name}: exit {proc.returncode}, {time.monotonic() - t0:.0f} s]\n")
            log.flush()
            if name == "versions" and proc.returncode == 0:
                info.update(json.loads(proc.stdout.strip().splitlines()[-1]))
            elif name in ("unit", "notebooks"):
                info[name] = parse_pytest(proc.stdout)
                info[name + "_failures"] = failures(proc.stdout)
                if proc.returncode != 0:
                    status = 1
            elif proc.returncode != 0:
                info["broken"] = name
                status = 2
                print(proc.stdout[-3000:], file=sys.stderr)
                break
    info["seconds"] = time.monotonic() - start
    if not args.keep and (work / "venv").exists():
        shutil.rmtree(work / "venv")
    with open(args.scratch / "results.jsonl", "a") as out:
        out.write(json.dumps(info) + "\n")
    for line in info.get("unit_failures", []) + info.get("notebooks_failures", []):
        print("  " + line[:200])
    print(summary_line(info))
    return status


if __name__ == "__main__":
    sys.exit(main())
