# The two things a fresh machine needs (README):
#   make smoke   install the controller and run the whole recipe at smoke scale on this CPU
#   make test    install the controller + the smoke stage environment and run every test
PYTHON ?= python3
VENV ?= .venv
STAGE_VENV ?= .venv-stage
export SKYPILOT_DISABLE_USAGE_COLLECTION := 1

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -U pip
	$(VENV)/bin/pip install -q -e .
	touch $@

$(VENV)/.test-installed: $(VENV)/.installed tests/requirements.txt
	$(VENV)/bin/pip install -q -r tests/requirements.txt
	touch $@

# The CPU stage environment (LLaMA-Factory + transformers): what `setup:` of every task installs at smoke
# scale. Kept apart from the controller: vLLM / LLaMA-Factory pins never touch it.
$(STAGE_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(STAGE_VENV)
	$(STAGE_VENV)/bin/pip install -q -U pip
	$(STAGE_VENV)/bin/pip install -q -r sky_tasks/requirements/smoke.txt pytest liger-kernel
	$(STAGE_VENV)/bin/pip install -q --no-build-isolation deepspeed   # for LLaMA-Factory's parser on sft configs
	$(STAGE_VENV)/bin/pip install -q --no-deps -e .
	touch $@

install: $(VENV)/.installed

smoke: $(VENV)/.installed
	$(VENV)/bin/reproduce all --budget 450 --scale smoke -y

# The tests that need torch / transformers / LLaMA-Factory, in the stage environment (they skip elsewhere),
# then every controller test (the smoke run among them builds its stage environment from the tasks' `setup:`).
STAGE_TESTS = tests/test_generate.py tests/test_evaluate.py tests/test_convert.py tests/test_sft.py
test: $(VENV)/.test-installed $(STAGE_VENV)/.installed
	$(STAGE_VENV)/bin/python -m pytest -q -m "not slow" $(STAGE_TESTS)
	$(STAGE_VENV)/bin/python -m pytest -q tests/test_optimize.py -k llamafactory
	$(VENV)/bin/python -m pytest -q

bench: $(VENV)/.test-installed
	$(VENV)/bin/python benchmarks/cli_speed.py --all

.PHONY: install smoke test bench
