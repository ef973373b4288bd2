# The course's two commands:
#   make test   set up .venv, lint (ruff, chapter line widths), then run the unit tests and every
#               chapter under `pytest --nbval`
#   make book   set up .venv, then build the rendered book into _build/html
# and for instructors: `make student` (chapters without solutions), `make check-book`,
# `make full-dry-run` (every chapter's FULL = True path, offline, as a crash test).
#
# Set-up installs torch FIRST, pinned to a CPU build where one is available, so that the
# `torch>=2.1` requirement of segcourse is already met and pip never pulls a multi-GB CUDA build.
# On a Linux machine without a local CPU wheel, point pip at PyTorch's CPU index, e.g.
#   make test TORCH_INDEX=https://download.pytorch.org/whl/cpu
# (On Colab nothing of this runs: torch is already there and the notebooks pip-install segcourse.)

PYTHON      ?= python3
VENV        ?= .venv
TORCH       ?= torch==2.13.0
TORCH_INDEX ?=
BIN         := $(VENV)/bin
STAMP       := $(VENV)/.segcourse-installed

.PHONY: test lint unit book venv clean student check-book full-dry-run

test: $(STAMP) lint
	$(BIN)/python -m pytest --nbval -p no:cacheprovider

# ruff on the package, tests and scripts; every chapter's code and text output within the
# book's 80-character column
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python tools/nbstats.py --check notebooks/*.ipynb

unit: $(STAMP)
	$(BIN)/python -m pytest -p no:cacheprovider tests

book: $(STAMP)
	$(BIN)/jupyter-book build . --config book/_config.yml --toc book/_toc.yml -W -n --keep-going

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade --quiet pip
	$(BIN)/python -c "import torch" 2>/dev/null || \
		$(BIN)/python -m pip install --quiet $(TORCH) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/python -m pip install --quiet -e ".[test,book,dev,deploy]"
	touch $(STAMP)

# Chapters for students: solutions replaced by a stub, outputs cleared, written to student/.
student: $(STAMP)
	$(BIN)/python tools/student.py notebooks/*.ipynb --out student

# Open every chapter page of the built book in headless Chromium: figures, Colab link, no errors.
check-book: $(STAMP)
	$(BIN)/python tools/check_book.py _build/html --screenshots _build/screenshots

# Every chapter with FULL = True, offline: fake Pets, random checkpoints, 16 images, one epoch.
full-dry-run: $(STAMP)
	$(BIN)/python tools/full_dry_run.py notebooks/*.ipynb

clean:
	rm -rf _build student
