# oodseg — the two entry points: `make demo` (set-up + end-to-end run) and `make test`
# (set-up + the whole test suite). Both create .venv and install with constraints.txt.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-fast test-slow bench clean

$(STAMP): pyproject.toml setup.py src/oodseg/scores/_summary.c constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q -c constraints.txt -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/oodseg demo --out demo-out

test: $(STAMP)
	bash scripts/install-chromium.sh
	OODSEG_REQUIRE_KERNEL=1 $(PY) -m pytest
	OODSEG_REQUIRE_KERNEL=1 $(PY) -m pytest -m slow

test-fast: $(STAMP)
	$(PY) -m pytest

bench: $(STAMP)
	for f in benchmarks/*.py; do $(PY) $$f || exit 1; done

clean:
	rm -rf $(VENV) demo-out .cache
