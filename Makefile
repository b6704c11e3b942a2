# The two things a fresh machine needs (README):
#   make smoke   install the controller and run the whole recipe at smoke scale on this CPU
#   make test    install the controller + the smoke stage environment and run every test
# and, after a change to sky_tasks/requirements/:
#   make lock    re-resolve every stage environment into sky_tasks/locks/ (pinned, with hashes)
PYTHON ?= python3
VENV ?= .venv
STAGE_VENV ?= .venv-stage
export SKYPILOT_DISABLE_USAGE_COLLECTION := 1
# With this set, every test process would compile what has no bytecode yet (the checkout's modules, a stage
# env uv built without it) again; unset, each module compiles once (the caches are gitignored).
unexport PYTHONDONTWRITEBYTECODE

# uv builds every environment, here and on the nodes: the same version wrote the locks and the tasks'
# `setup:` installs them with it (sky_tasks/*.yaml and pyproject.toml pin it too). pip only fetches it.
UV_VERSION := 0.13.9
UV := .uv/$(UV_VERSION)/bin/uv
$(UV):
	$(PYTHON) -m pip install -q --root-user-action=ignore --target .uv/$(UV_VERSION) uv==$(UV_VERSION)

$(VENV)/.installed: pyproject.toml | $(UV)
	$(UV) venv -q --allow-existing --seed --python $(PYTHON) $(VENV)
	$(UV) pip install -q --compile-bytecode --python $(VENV)/bin/python -e .
	touch $@

$(VENV)/.test-installed: $(VENV)/.installed tests/requirements.txt
	$(UV) pip install -q --compile-bytecode --python $(VENV)/bin/python -r tests/requirements.txt
	touch $@

# The CPU stage environment: exactly the smoke lock, what every task's `setup:` installs at smoke scale
# (sync: nothing else stays in it), then this package alone. vLLM / LLaMA-Factory pins never reach .venv.
# No bytecode at install (~45 s more here, for files no test imports): the first make test writes it for
# what the tests import (PYTHONDONTWRITEBYTECODE is unexported above), later processes reuse it.
LOCK_INSTALL = --require-hashes --build-constraints sky_tasks/locks/build.txt
$(STAGE_VENV)/.installed: sky_tasks/locks/smoke.txt sky_tasks/locks/build.txt pyproject.toml | $(UV)
	$(UV) venv -q --allow-existing --python 3.11 $(STAGE_VENV)
	$(UV) pip sync -q --python $(STAGE_VENV)/bin/python $(LOCK_INSTALL) sky_tasks/locks/smoke.txt
	$(UV) pip install -q --python $(STAGE_VENV)/bin/python --no-deps -e .
	touch $@

# The hub loaders' tests (tests/test_hub_loaders.py) run the real datasets / huggingface_hub at the versions the
# GPU stages get: those of the generate lock (constraints), with pytest; they skip where datasets is missing.
HUB_VENV ?= .venv-hub
$(HUB_VENV)/.installed: sky_tasks/locks/generate.txt pyproject.toml | $(UV)
	$(UV) venv -q --allow-existing --python 3.11 $(HUB_VENV)
	$(UV) pip install -q --python $(HUB_VENV)/bin/python -c sky_tasks/locks/generate.txt datasets huggingface-hub pyyaml pytest
	$(UV) pip install -q --python $(HUB_VENV)/bin/python --no-deps -e .
	touch $@

# One lock per stage environment, for the nodes: Python 3.11 on Linux x86_64 (CUDA wheels from PyPI).
# --exclude-newer: PyPI as it stood on LOCK_DATE, so the same inputs give the same lock on any day; an
# existing lock's pins are kept unless LOCK_FLAGS=--upgrade (with a later LOCK_DATE).
LOCKS = smoke sft generate filter build
LOCK_DATE ?= 2026-12-01
LOCK_FLAGS ?=
lock: | $(UV)
	@mkdir -p sky_tasks/locks
	for env in $(LOCKS); do \
	  $(UV) pip compile -q --generate-hashes --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
	    --exclude-newer $(LOCK_DATE) -c sky_tasks/requirements/constraints.txt --custom-compile-command "make lock" \
	    $(LOCK_FLAGS) sky_tasks/requirements/$$env.txt -o sky_tasks/locks/$$env.txt || exit 1; \
	done

install: $(VENV)/.installed

smoke: $(VENV)/.installed
	$(VENV)/bin/reproduce all --budget 450 --scale smoke -y

# The tests that need torch / transformers / LLaMA-Factory run in the stage environment (they skip
# elsewhere), the slow SFT preempt/resume among them; then every controller test. The smoke run among
# those builds its stage environment from the tasks' `setup:` into the per-user cache: the same lock, so
# seconds and a few MB (uv hard links from its cache). Two workers, each taking whole files (module
# fixtures such as the smoke run stay one run): many tests wait on subprocesses and clocks, not the CPU.
STAGE_TESTS = tests/test_generate.py tests/test_evaluate.py tests/test_convert.py tests/test_sft.py \
	tests/test_gpu_check.py
TEST_WORKERS ?= 2
PYTEST = -m pytest -q -n $(TEST_WORKERS) --dist loadfile
test: $(VENV)/.test-installed $(STAGE_VENV)/.installed $(HUB_VENV)/.installed
	$(STAGE_VENV)/bin/python $(PYTEST) $(STAGE_TESTS)
	$(HUB_VENV)/bin/python -m pytest -q tests/test_hub_loaders.py
	$(STAGE_VENV)/bin/python -m pytest -q tests/test_optimize.py -k llamafactory
	$(VENV)/bin/python $(PYTEST)

bench: $(VENV)/.test-installed
	$(VENV)/bin/python benchmarks/cli_speed.py --all

# The long kill-and-resume runs (twenty seeds of each drill; the suite keeps two): minutes, $0, sim backend.
soak: $(VENV)/.test-installed
	$(VENV)/bin/python benchmarks/kill_resume_soak.py

.PHONY: install smoke test bench soak lock
