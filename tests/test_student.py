"""tools/student.py: student copies lose their solutions and outputs, keep everything else."""

import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
from student import main, strip_solutions  # noqa: E402


def _notebook():
    md, code = nbformat.v4.new_markdown_cell, nbformat.v4.new_code_cell
    solution = code("answer = 42\nprint(answer)", metadata={"tags": ["solution"]})
    solution.outputs = [nbformat.v4.new_output("stream", name="stdout", text="42\n")]
    solution.execution_count = 3
    kept = code("x = 1")
    kept.outputs = [nbformat.v4.new_output("execute_result", data={"text/plain": "1"})]
    kept.execution_count = 1
    return nbformat.v4.new_notebook(cells=[
        md("# Chapter"),
        kept,
        md("```{exercise} Find it\n:label: ex-find\nCompute the answer.\n```\n\n"
           "```{solution-start} ex-find\n:class: dropdown\n```\n\nThe answer is 42 because..."),
        solution,
        code("assert answer == 42", metadata={"tags": ["solution"]}),
        md("```{solution-end}\n```\n\n## Next section"),
        code("y = 2"),
    ])


def test_solutions_removed_stub_left_rest_kept():
    out, removed = strip_solutions(_notebook())
    text = "\n".join(c.source for c in out.cells)
    assert removed == 1
    assert "answer = 42" not in text and "The answer is 42" not in text
    assert "solution-start" not in text and "solution-end" not in text
    assert "Compute the answer." in text and "## Next section" in text and "y = 2" in text
    stubs = [c for c in out.cells if "exercise-stub" in c.metadata.get("tags", [])]
    assert len(stubs) == 1 and "ex-find" in stubs[0].source
    # order: exercise statement, stub, next section
    sources = [c.source for c in out.cells]
    assert sources.index(stubs[0].source) == 3 and sources[4] == "## Next section"


def test_outputs_cleared():
    out, _ = strip_solutions(_notebook())
    for cell in out.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None


def test_unclosed_solution_is_an_error():
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(
        "```{solution-start} ex-a\n```\ntext")])
    with pytest.raises(ValueError, match="ex-a"):
        strip_solutions(nb)


def test_every_chapter_converts_and_keeps_its_exercises(tmp_path):
    chapters = sorted((ROOT / "notebooks").glob("*.ipynb"))
    assert chapters
    main([str(p) for p in chapters] + ["--out", str(tmp_path)])
    for path in chapters:
        original = nbformat.read(path, as_version=4)
        student = nbformat.read(tmp_path / "notebooks" / path.name, as_version=4)
        markdown = [c.source for c in original.cells if c.cell_type == "markdown"]
        n_exercises = sum(source.count("{exercise}") for source in markdown)
        n_solutions = sum(source.count("{solution-start}") for source in markdown)
        assert n_solutions == n_exercises, path.name  # every exercise has a solution
        assert sum(c.source.count("{exercise}") for c in student.cells) == n_exercises
        assert not any("solution" in c.metadata.get("tags", []) for c in student.cells), path.name
        assert all(not c.get("outputs") for c in student.cells if c.cell_type == "code")
