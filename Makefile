# nanoko-harness: `make` lists the targets.
#
# The interpreter: an active virtual env ($VIRTUAL_ENV) or conda env ($CONDA_PREFIX) is used as it is;
# otherwise ./.venv, created and installed on first use (torch's CPU wheel first, then the harness with
# its dev tools) and installed again when pyproject.toml changes. PYTHON=... picks another interpreter.
SPEC ?= experiments/seed.yaml
JOBS ?= 2
ARGS ?=
TESTS ?=
TEST_WORKERS ?= auto
PORT ?= 5000
EXTRAS ?= dev
TEST_EXTRAS ?= dev,ray,ui,docs,server,slurm
TORCH_VERSION ?= 2.13.0
# torch: on Linux without an NVIDIA GPU (no working nvidia-smi) the CPU-only wheel from PyTorch's CPU index, found
# beside PyPI's CUDA build (a "+cpu" version ranks above it), so no CUDA libraries come down; --no-deps asks that
# index for torch alone, and torch's own dependencies come from PyPI with the harness, installed right after it.
# With an NVIDIA GPU, and on macOS, PyPI's own build (CUDA on Linux, CPU/MPS on macOS). TORCH=... picks any other.
HAS_NVIDIA_GPU := $(shell nvidia-smi -L >/dev/null 2>&1 && echo yes)
ifeq ($(shell uname -s)-$(HAS_NVIDIA_GPU),Linux-)
TORCH ?= torch==$(TORCH_VERSION) --no-deps --extra-index-url https://download.pytorch.org/whl/cpu
else
TORCH ?= torch==$(TORCH_VERSION)
endif
DOCS_PORT ?= 8000
DB ?= sqlite
DB_URI ?=
PG_DIR ?= .harness/postgres
SERVER_ARGS ?=
SERVER_HOST ?= 127.0.0.1
PYTHON3 ?= python3
VENV ?= .venv
comma := ,
HERE := $(dir $(abspath $(lastword $(MAKEFILE_LIST))))

ifneq ($(strip $(VIRTUAL_ENV)),)
ENV_DIR := $(VIRTUAL_ENV)
else ifneq ($(strip $(CONDA_PREFIX)),)
ENV_DIR := $(CONDA_PREFIX)
endif

ifdef ENV_DIR
PYTHON ?= $(ENV_DIR)/bin/python
READY := env-check
TEST_READY := env-check
else
PYTHON ?= $(VENV)/bin/python
# One stamp per set of extras: `make test EXTRAS=dev,ray` installs Ray once, then finds it there.
READY := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))
# The tests need Ray (tests/test_ray.py), playwright (tests/test_ui.py), mkdocs (tests/test_docs.py), psycopg2 and
# submitit (tests/test_team_server.py, tests/test_slurm.py) too.
TEST_READY := $(VENV)/.installed-$(subst $(comma),-,$(TEST_EXTRAS))
endif

.DEFAULT_GOAL := help
.PHONY: help install install-ui env-check ablations smoke test lint bench bench-gpu report ui ui-shots server clean schema docs docs-check

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'
	@echo "  variables: SPEC=$(SPEC) JOBS=$(JOBS) ARGS='key=value ...' (e.g. ARGS=train.steps=500) EXTRAS=$(EXTRAS)"
	@echo "  python: $(PYTHON) (an active venv/conda env as it is, else ./$(VENV), made on first use)"
	@echo "  torch, when the env has none: pip install $(TORCH)"

# -- the environment -------------------------------------------------------------------------------
$(VENV)/bin/python:
	@$(PYTHON3) -m venv $(VENV) || { rm -rf $(VENV); \
	  echo "make: '$(PYTHON3) -m venv' failed: this Python lacks the venv module or ensurepip."; \
	  echo "  On Debian/Ubuntu: sudo apt-get install python3-venv   (or python3.X-venv for your python3 --version)"; \
	  echo "  Or activate a virtual env or conda env of your own and run make again (it is used as it is)."; \
	  exit 1; }

$(VENV)/.installed-%: pyproject.toml | $(VENV)/bin/python
	$(VENV)/bin/python -c "import torch" 2>/dev/null || $(VENV)/bin/python -m pip install $(TORCH)
	$(VENV)/bin/python -m pip install -e ".[$(subst -,$(comma),$*)]"
	@touch $@

env-check:
	@$(PYTHON) -c "import importlib.util as u, sys; missing = [m for m in ('torch', 'mlflow', 'pytest', 'harness') if u.find_spec(m) is None]; \
	  missing and sys.exit('make: $(PYTHON) lacks ' + ', '.join(missing) + ': run make install (installs into this env)')"

install: ## install torch (if none: the CPU wheel, or the CUDA one where nvidia-smi sees a GPU), the harness and its dev tools
	@test -x $(PYTHON) || $(MAKE) --no-print-directory $(VENV)/bin/python
	$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install $(TORCH)
	$(PYTHON) -m pip install -e ".[$(EXTRAS)]"
ifndef ENV_DIR
	@touch $(READY)
endif

install-ui: $(READY) ## the browser client for ui-shots: playwright, driving the system chromium (no download)
	$(PYTHON) -m pip install -e ".[ui]"
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  echo "make: no chromium on the PATH; on Debian/Ubuntu: sudo apt-get install chromium fonts-noto-cjk (CJK: the Korean samples)"

# -- the work --------------------------------------------------------------------------------------
smoke: $(READY) ## the write-up's 8-variant grid at 30 steps: the whole pipeline in about a minute
	$(PYTHON) -m harness run experiments/smoke.yaml $(ARGS)

ablations: $(READY) ## the grid of SPEC into MLflow and results/<name>/ (seed.yaml's 50,000 steps: about an hour on 2 CPU cores; ARGS=train.steps=500 is a first look)
	$(PYTHON) -m harness run $(SPEC) --jobs $(JOBS) $(ARGS)

test: $(TEST_READY) ## the test suite (what CI runs), one pytest-xdist worker per core; TESTS='tests/test_x.py -k y' picks some, TEST_WORKERS=0 runs them in this process
	$(PYTHON) -m pytest -q -n $(TEST_WORKERS) $(TESTS)

lint: $(READY) ## ruff (rules in pyproject.toml) and the import contracts (lint-imports): what CI runs before the tests
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .
	$(dir $(PYTHON))lint-imports --no-cache

bench: $(READY) ## speed: the write-up's and the lecture's loops vs the harness loop, seeds stacked, evaluation share and start-up
	$(PYTHON) benchmarks/step_speed.py --threads 1 $(ARGS)
	$(PYTHON) benchmarks/gpt_speed.py
	$(PYTHON) benchmarks/attention_bound.py
	$(PYTHON) benchmarks/seed_stacking.py
	$(PYTHON) benchmarks/run_costs.py

bench-gpu: $(READY) ## the seed grid on one GPU, lever by lever (no host syncs, stacked seeds, CUDA graphs, --jobs): results/bench/grid_gpu.csv
	$(PYTHON) benchmarks/grid_gpu.py --device cuda $(ARGS)

report: $(READY) ## rebuild results/<name>/ for SPEC from the local MLflow store
	$(PYTHON) -m harness report $(SPEC)

ui: $(READY) ## the MLflow UI on the local store; prints the runs table's address
	@$(PYTHON) -c "from harness.tracking import runs_url, open_store; from harness.spec import load_spec; \
	  c = open_store('sqlite:///mlflow.db'); \
	  e = c.get_experiment_by_name(load_spec('$(SPEC)').name); \
	  print('runs of $(SPEC):', runs_url('http://127.0.0.1:$(PORT)', e.experiment_id) if e else 'none yet (make ablations)')" 2>/dev/null || true
	$(PYTHON) -m mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port $(PORT)

ui-shots: $(READY) ## a 300-step sweep in a temporary store, photographed in chromium: results/ui/*.png
	@$(PYTHON) -c "import playwright" 2>/dev/null || $(MAKE) --no-print-directory install-ui
	$(PYTHON) -m harness.ui_shots $(ARGS)

server: $(READY) ## an MLflow tracking server on $(SERVER_HOST):$(PORT) serving the artifacts: DB=sqlite (mlflow-server.db), DB=postgres (a cluster in $(PG_DIR)) or DB_URI=postgresql+psycopg2://...; SERVER_HOST=0.0.0.0 for a team
	@case "$(DB)" in sqlite|postgres) ;; *) echo "make server: DB=$(DB): choices are sqlite, postgres (or DB_URI=...)"; exit 2;; esac
	@if [ -n "$(DB_URI)" ]; then uri="$(DB_URI)"; \
	elif [ "$(DB)" = postgres ]; then \
	  $(PYTHON) -c "import psycopg2" 2>/dev/null || { echo "make server DB=postgres needs psycopg2: $(PYTHON) -m pip install -e '.[server]'"; exit 1; }; \
	  uri=$$($(HERE)scripts/postgres.sh start $(PG_DIR)) || exit 1; \
	  echo "PostgreSQL in $(PG_DIR) (stop it: $(HERE)scripts/postgres.sh stop $(PG_DIR))"; \
	else uri=sqlite:///mlflow-server.db; fi; \
	echo "backend store: $$uri"; \
	exec $(PYTHON) -m mlflow server --backend-store-uri "$$uri" --serve-artifacts --artifacts-destination ./mlartifacts --host $(SERVER_HOST) --port $(PORT) $(SERVER_ARGS)

clean: ## remove caches and checkpoints (keeps mlflow.db, results/ and .venv)
	rm -rf .pytest_cache .harness build site *.egg-info
	find . -name __pycache__ -type d -prune -not -path "./$(VENV)/*" -exec rm -rf {} +

schema: $(READY) ## regenerate what is derived from the spec's keys: experiments/spec.schema.json and docs/spec-reference.md
	$(PYTHON) -m harness schema
	$(PYTHON) -m harness reference

# -- the documentation site (docs/, mkdocs.yml) --------------------------------------------------------
docs: $(READY) ## build the documentation site into site/ and serve it on 127.0.0.1:$(DOCS_PORT) (mkdocs-material)
	@$(PYTHON) -c "import material" 2>/dev/null || $(PYTHON) -m pip install -e ".[docs]"
	NO_MKDOCS_2_WARNING=1 $(PYTHON) -m mkdocs build --strict
	NO_MKDOCS_2_WARNING=1 $(PYTHON) -m mkdocs serve --dev-addr 127.0.0.1:$(DOCS_PORT)

docs-check: $(READY) ## what CI runs: the spec reference is current and the site builds with --strict (no broken link, every page in the nav)
	@$(PYTHON) -c "import material" 2>/dev/null || $(PYTHON) -m pip install -e ".[docs]"
	$(PYTHON) -m harness reference --check
	NO_MKDOCS_2_WARNING=1 $(PYTHON) -m mkdocs build --strict
