# SiamMAE: `make demo` runs the notebook on the shipped sample data, `make test` runs the tests.
# Both build .venv first (once; again only when requirements.txt changes).

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
OUT    ?= outputs/demo
TESTS  ?= tests

.PHONY: setup test lint demo notebook bench clean

setup: $(STAMP)

$(STAMP): requirements.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt
	@if $(PY) -m pip list 2>/dev/null | grep -qi '^nvidia-'; then \
		echo "note: CUDA packages present in $(VENV) (expected only on a CUDA machine)"; fi
	@touch $(STAMP)

lint: setup
	$(PY) -m ruff check .

test: setup lint
	$(PY) -m pytest $(TESTS)

demo: setup
	$(PY) -m ml.demo --output $(OUT)

notebook: setup
	$(VENV)/bin/jupyter lab SiamMAE.ipynb

bench: setup
	$(PY) -m bench.run_all

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache outputs
