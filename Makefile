# The two commands of the README. Both create or reuse .venv and install what they need.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint venv clean-demo

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements-dev.txt
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(PY) demo.py

lint: $(STAMP)
	$(PY) -m ruff check .

# one torch thread per pytest worker: two workers with two threads each thrash two cores
test: lint
	OMP_NUM_THREADS=1 $(PY) -m pytest -n 2 --dist loadfile

clean-demo:
	rm -rf logs/demo-* data/CT data/*.txt
