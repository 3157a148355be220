# The two commands a newcomer needs: `make demo` and `make test`. Both set up everything.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install demo test lint bench screenshot clean

# Sources mypyc compiles (setup.py's DATA_PLANE, and their neighbours): a change rebuilds.
DATA_PLANE := $(wildcard src/croupier/proxy/*.py src/croupier/model/*.py src/croupier/balancing/*.py)
COMPILED   := $(VENV)/.compiled

$(STAMP): pyproject.toml setup.py
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "croupier needs Python 3.11 or newer"'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip 'setuptools>=77' wheel
	CROUPIER_PURE=1 $(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The data plane compiled in place with the venv's mypy (setup.py); CROUPIER_PURE=1 keeps it
# interpreted and removes what an earlier build left, which would otherwise be imported.
$(COMPILED): $(STAMP) $(DATA_PLANE) setup.py
ifeq ($(CROUPIER_PURE),1)
	find src -name '*.so' -delete
	rm -f $(COMPILED)
else
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(COMPILED)
endif

install: $(COMPILED)

demo: $(COMPILED)
	$(VENV)/bin/croupier demo

lint: $(COMPILED)
	$(PY) -m ruff check src tests bench setup.py
	$(PY) -m mypy src setup.py
	$(VENV)/bin/lint-imports          # DESIGN.md's layers: pyproject.toml [tool.importlinter]

test: lint
	bash tests/install.sh            # Debian's packages the tests start (etcd)
	$(PY) -m pytest -q

bench: $(COMPILED)
	CROUPIER_PURE=1 $(PY) -m pip install --quiet -e '.[dev,bench]'  # leaves the build in place
	bash bench/install.sh
	$(PY) bench/run.py

# The README's picture of the dashboard, during a drain, in the browser the tests use.
screenshot: $(COMPILED)
	bash tests/install.sh
	$(PY) tests/browser/screenshot.py docs/dashboard.png

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build
	find src -name '*.so' -delete
