# nanoko-harness: `make` lists the targets.
PYTHON ?= python3
SPEC ?= experiments/seed.yaml
JOBS ?= 2
ARGS ?=
PORT ?= 5000

.DEFAULT_GOAL := help
.PHONY: help install ablations smoke test test-all bench report ui server clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'
	@echo "  variables: SPEC=$(SPEC) JOBS=$(JOBS) ARGS='key=value ...' (e.g. ARGS=train.steps=500)"

install: ## install torch (CPU wheel 2.13.0 if none), the harness and its dev tools
	$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install torch==2.13.0
	$(PYTHON) -m pip install -e ".[dev]"

ablations: ## run the write-up's 8-variant grid (SPEC) into MLflow and results/<name>/
	$(PYTHON) -m harness run $(SPEC) --jobs $(JOBS) $(ARGS)

smoke: ## the same grid at 30 steps: the whole pipeline in seconds
	$(PYTHON) -m harness run experiments/smoke.yaml $(ARGS)

test: ## the test suite (what CI runs)
	$(PYTHON) -m pytest -q

bench: ## step speed: the write-up's loop vs the harness loop, and MLflow logging overhead
	$(PYTHON) benchmarks/step_speed.py $(ARGS)

report: ## rebuild results/<name>/ for SPEC from the local MLflow store
	$(PYTHON) -m harness report $(SPEC)

ui: ## the MLflow UI on the local store (http://127.0.0.1:$(PORT))
	$(PYTHON) -m mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port $(PORT)

server: ## a real MLflow tracking server on 127.0.0.1:$(PORT) (SQLite + ./mlartifacts); MLFLOW_TRACKING_URI=http://127.0.0.1:$(PORT)
	$(PYTHON) -m mlflow server --backend-store-uri sqlite:///mlflow-server.db --artifacts-destination ./mlartifacts --host 127.0.0.1 --port $(PORT)

clean: ## remove caches and checkpoints (keeps mlflow.db and results/)
	rm -rf .pytest_cache .harness build *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

.PHONY: schema
schema: ## regenerate experiments/spec.schema.json (the JSON Schema editors use to check specs)
	$(PYTHON) -m harness schema
