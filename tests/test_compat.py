"""tools/compat.py: argument parsing, interpreter search, constraints, commands and pytest parsing.

Nothing here creates a venv, installs a package or reaches a network.
"""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("compat", ROOT / "tools" / "compat.py")
compat = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(compat)

OLDEST = ["--python", "3.10", "--torch", "2.1.2", "--numpy", "1.26.4"]


def test_defaults_and_tag():
    args = compat.parse_args(OLDEST)
    assert (args.python, args.torch, args.numpy) == ("3.10", "2.1.2", "1.26.4")
    assert not args.notebooks and not args.keep and not args.dry_run
    assert args.torch_index is None and args.transformers is None
    assert args.tag == "py3.10-torch2.1.2-np1.26.4"
    assert args.scratch == Path("/tmp/segcourse-compat")
    assert compat.parse_args(OLDEST + ["--transformers", "<5"]).tag.endswith("-tflt5")
    assert compat.parse_args(OLDEST + ["--transformers", "==4.57.6"]).tag.endswith("-tf4.57.6")


@pytest.mark.parametrize("argv, match", [
    (["--python", "3", "--torch", "2.1.2", "--numpy", "1.26.4"], "--python"),
    (["--python", "3.10.13", "--torch", "2.1.2", "--numpy", "1.26.4"], "--python"),
    (["--python", "3.10", "--torch", "latest", "--numpy", "1.26.4"], "--torch"),
    (["--python", "3.10", "--torch", "2.1.2", "--numpy", "1.26; rm"], "--numpy"),
    (OLDEST + ["--transformers", "4.46"], "--transformers"),
    (OLDEST + ["--tag", "../escape"], "--tag"),
    (["--torch", "2.1.2", "--numpy", "1.26.4"], "--python"),
])
def test_bad_arguments_are_refused_naming_the_argument(argv, match, capsys):
    with pytest.raises(SystemExit) as exc:
        compat.parse_args(argv)
    assert exc.value.code == 2
    assert match in capsys.readouterr().err


def test_constraints_pin_torch_and_numpy_exactly():
    args = compat.parse_args(OLDEST)
    assert compat.constraints_text(args) == "torch==2.1.2\nnumpy==1.26.4\n"
    args = compat.parse_args(OLDEST + ["--transformers", "==4.46.3"])
    assert compat.constraints_text(args).splitlines()[-1] == "transformers==4.46.3"


def test_plan_commands(tmp_path):
    args = compat.parse_args(OLDEST + ["--scratch", str(tmp_path)])
    steps = compat.plan(args, Path("/usr/bin/python3.10"))
    names = [name for name, _ in steps]
    assert names == ["venv", "pip", "torch", "numpy", "segcourse", "versions", "unit"]
    cmds = dict(steps)
    venv_py = str(tmp_path / args.tag / "venv" / "bin" / "python")
    assert cmds["venv"] == ["/usr/bin/python3.10", "-m", "venv",
                            str(tmp_path / args.tag / "venv")]
    assert cmds["torch"][:4] == [venv_py, "-m", "pip", "install"]
    assert cmds["torch"][-1] == "torch==2.1.2" and "--index-url" not in cmds["torch"]
    assert cmds["numpy"][-1] == "numpy==1.26.4"
    assert cmds["segcourse"][-2:] == ["-e", f"{compat.REPO}[test,deploy]"]
    # the unit tests exactly as the brief says, failures listed
    assert cmds["unit"][1:] == ["-m", "pytest", "-q", "-rfE", "-p", "no:cacheprovider", "tests"]
    assert not any("--upgrade" in c for c in cmds["segcourse"])


def test_plan_torch_index_notebooks_and_extra_args(tmp_path):
    url = "https://download.pytorch.org/whl/cpu"
    args = compat.parse_args(OLDEST + ["--torch-index", url, "--notebooks",
                                       "--pytest-args", "-x -k fit", "--scratch", str(tmp_path)])
    cmds = dict(compat.plan(args, Path("python3.10")))
    assert cmds["torch"][-3:] == ["torch==2.1.2", "--index-url", url]
    assert "--index-url" not in cmds["numpy"] and "--index-url" not in cmds["segcourse"]
    assert cmds["notebooks"][-5:-3] == ["--nbval", "notebooks"]
    assert cmds["notebooks"][-3:] == ["-x", "-k", "fit"]
    assert cmds["unit"][-3:] == ["-x", "-k", "fit"]


def test_environment_uses_the_constraints_and_one_thread(tmp_path, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv("VIRTUAL_ENV", "/somewhere/.venv")
    env = compat.environment(compat.parse_args(OLDEST), tmp_path / "c.txt")
    assert env["PIP_CONSTRAINT"] == str(tmp_path / "c.txt")
    assert env["OMP_NUM_THREADS"] == "1" and "VIRTUAL_ENV" not in env
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert compat.environment(compat.parse_args(OLDEST), tmp_path)["OMP_NUM_THREADS"] == "2"


def test_find_python(tmp_path, monkeypatch):
    assert compat.find_python("3.10", Path("/x/python")) == Path("/x/python")
    for v in ("3.10.9", "3.10.13", "3.11.7"):
        exe = tmp_path / "versions" / v / "bin" / "python"
        exe.parent.mkdir(parents=True)
        exe.touch()
    # 3.10.13 beats 3.10.9 (numeric, not string, order)
    assert compat.find_python("3.10", pyenv_root=tmp_path).parent.parent.name == "3.10.13"
    monkeypatch.setattr(compat.shutil, "which", lambda name: None)
    with pytest.raises(SystemExit, match="--python-exe"):
        compat.find_python("3.12", pyenv_root=tmp_path)
    monkeypatch.setattr(compat.shutil, "which", lambda name: f"/usr/bin/{name}")
    assert compat.find_python("3.12", pyenv_root=tmp_path) == Path("/usr/bin/python3.12")


@pytest.mark.parametrize("tail, expected", [
    ("=== 23 failed, 301 passed, 2 warnings in 812.31s (0:13:32) ===",
     {"passed": 301, "failed": 23, "errors": 0, "skipped": 0}),
    ("1 failed, 10 passed, 2 skipped, 3 errors in 4.00s",
     {"passed": 10, "failed": 1, "errors": 3, "skipped": 2}),
    ("324 passed in 90.2s", {"passed": 324, "failed": 0, "errors": 0, "skipped": 0}),
    ("1 error in 0.5s", {"passed": 0, "failed": 0, "errors": 1, "skipped": 0}),
    ("ImportError while loading conftest", {"passed": 0, "failed": 0, "errors": -1,
                                            "skipped": 0}),
])
def test_parse_pytest(tail, expected):
    out = "FAILED tests/test_a.py::test_x - AttributeError: no GradScaler\n" + tail
    assert compat.parse_pytest(out) == expected


def test_failures_and_summary_line():
    out = ("..F\nFAILED tests/test_train.py::test_fit - AttributeError: x\n"
           "ERROR tests/test_b.py::test_y - ImportError\n1 failed, 1 error in 1s\n")
    assert compat.failures(out) == ["FAILED tests/test_train.py::test_fit - AttributeError: x",
                                    "ERROR tests/test_b.py::test_y - ImportError"]
    line = compat.summary_line({"python": "3.10.13", "torch": "2.1.2+cu121", "numpy": "1.26.4",
                                "transformers": "5.24.0", "seconds": 812.4,
                                "unit": {"passed": 301, "failed": 23, "errors": 0}})
    assert line == ("compat: python 3.10.13 | torch 2.1.2+cu121 | numpy 1.26.4 | "
                    "transformers 5.24.0 | unit: 301 passed, 23 failed, 0 errors | 812 s")


def test_dry_run_installs_nothing(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "compat.py"), *OLDEST,
                           "--python-exe", sys.executable, "--scratch", str(tmp_path),
                           "--dry-run"], capture_output=True, text=True, check=True)
    assert "torch==2.1.2" in proc.stdout and "unit:" in proc.stdout
    assert list(tmp_path.iterdir()) == []
