#!/usr/bin/env bash
# Every task's `setup:` runs this, from the workdir (the repository, uploaded by SkyPilot):
#   bash sky_tasks/setup.sh sky_tasks/locks/$STAGE_EXTRAS.txt
# It builds the stage's environment from its lock: every package pinned with its hash, for Python 3.11 on
# Linux x86_64 (CUDA wheels), written by `make lock` from sky_tasks/requirements/. vLLM and LLaMA-Factory pin
# incompatible torch: one lock per stage. uv installs it, pinned to the version that wrote the locks (seconds
# where pip takes minutes: benchmarks/env_build.py); DeepSpeed's sdist is built from hash-checked build
# dependencies and compiles its ops at first use. Then this package alone.
# The local executor keys its cached environments by the setup text and the files it names, this script and
# those it names (reproduce/executors/local.py env_hash): editing it, or re-locking, builds a new environment.
set -euo pipefail
lock=${1:?usage: bash sky_tasks/setup.sh sky_tasks/locks/ENV.txt (one of: $(ls sky_tasks/locks))}
[ -f "$lock" ] || { echo "setup.sh: no lock $lock; locks: $(ls sky_tasks/locks)" >&2; exit 2; }
env_name=$(basename "$lock" .txt)

uv=${REPRODUCE_UV:-$HOME/.cache/reproduce/uv-0.13.9/bin/uv}
[ -x "$uv" ] || python3 -m pip install -q --target "${uv%/bin/uv}" uv==0.13.9
if ! python -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
  # another Python on this image: a 3.11 one (uv fetches it) in the environment SkyPilot activates
  "$uv" venv -q --clear --seed --python 3.11 "${VIRTUAL_ENV:?the locks need Python 3.11: activate a venv}"
fi
"$uv" pip install --python python --require-hashes --build-constraints sky_tasks/locks/build.txt -r "$lock"
if [ "$env_name" = filter ] && ! command -v bwrap >/dev/null; then
  # the filter runs model-written code in bubblewrap (reproduce/stages/lib/sandbox.py) and refuses without it
  sudo -n apt-get install -y -qq bubblewrap 2>/dev/null || apt-get install -y -qq bubblewrap
fi
if [ -f pyproject.toml ]; then   # a checkout; for a plain `pip install .` the workdir is a copy of the packages
  "$uv" pip install -q --python python --build-constraints sky_tasks/locks/build.txt --no-deps -e .
fi
