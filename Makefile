# One venv for everything; torch 2.13.0 (CPU) goes in first and constraints.txt keeps it there.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: install data repro test test-fast lint format bench clean

$(BIN)/readl: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e ".[dev]"
	touch $(BIN)/readl

install: $(BIN)/readl

# The bundled real images live in a DVC remote inside the repository (.dvc/sample-data): no network.
data/raw: data.dvc | $(BIN)/readl
	$(BIN)/dvc pull -q data.dvc

data: data/raw

# The whole pipeline on the bundled sample (tiny model, CPU): curate -> train -> calibrate -> evaluate.
repro: install data
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(BIN)/dvc repro

test: install data
	$(BIN)/pytest -q

# without the slow-marked end-to-end tests (dvc repro, Prefect retrain, multi-process evaluate / DDP train)
test-fast: install data
	$(BIN)/pytest -q -m "not slow"

# style: ruff lint + format check (configured in pyproject.toml); `make format` rewrites the files
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: install
	for b in $(filter-out benchmarks/gpu_check.py,$(wildcard benchmarks/*.py)); do $(BIN)/python $$b || exit 1; done  # gpu_check: CUDA only, by hand

clean:
	rm -rf $(VENV) .pytest_cache
