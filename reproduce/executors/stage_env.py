"""What a stage may see of this process's environment: the secrets its task declares, nothing else secret.

    env = scrub(os.environ, allowed=declared("filter", task_cfg))   # no AWS_*, OPENAI_*, HF_TOKEN, ...

A stage run on this machine would otherwise inherit every key of the user's shell (the filter, which runs
model-written code, got OPENAI_API_KEY, HF_TOKEN, AWS and W&B keys though sky_tasks/filter.yaml declares
none). On a cloud node SkyPilot hands a task only its `secrets:`; this gives the local executor the same rule.
A name looks like a credential if it belongs to a provider's family (AWS_*, OPENAI_*, HF_*, ...; their
non-secret cache and mode settings excepted) or names a key, token, secret or password.
"""
from __future__ import annotations

import re

from costmodel.stages import STAGES

# Provider families whose variables carry or point to credentials.
FAMILIES = ("AWS_", "OPENAI_", "ANTHROPIC_", "HF_", "HUGGING_FACE_", "HUGGINGFACE_", "WANDB_", "GOOGLE_", "GCP_",
            "GCLOUD_", "CLOUDSDK_", "AZURE_", "ARM_", "GITHUB_", "GH_", "GITLAB_", "LAMBDA_", "RUNPOD_", "KUBE",
            "DOCKER_", "NEBIUS_", "OCI_", "IBM_", "DO_", "PAPERSPACE_", "VAST_", "FLUIDSTACK_", "CUDO_", "SCP_")
# Settings in those families that hold no secret and change what a stage does (caches, offline mode, logging).
NOT_SECRET = {"HF_HOME", "HF_HUB_CACHE", "HF_DATASETS_CACHE", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE",
              "HF_HUB_DISABLE_TELEMETRY", "HF_HUB_ENABLE_HF_TRANSFER", "HF_ENDPOINT", "HF_HUB_DISABLE_PROGRESS_BARS",
              "WANDB_MODE", "WANDB_DISABLED", "WANDB_PROJECT", "WANDB_ENTITY", "WANDB_DIR", "WANDB_SILENT"}
_WORDS = re.compile(r"(^|_)(KEY|KEYS|APIKEY|TOKEN|TOKENS|SECRET|SECRETS|PASS|PASSWORD|PASSWD|PWD_SECRET|"
                    r"CREDENTIAL|CREDENTIALS|AUTH|COOKIE|SESSION|PRIVATE)(_|$)")
_INSIDE = ("SECRET", "PASSWORD", "PASSWD", "CREDENTIAL", "APIKEY", "API_KEY", "ACCESS_KEY", "PRIVATE_KEY")
# Controller stages have no task YAML: what each needs is its row's `secrets` (the rewrite's OpenAI client).
CONTROLLER_SECRETS = {s.name: s.secrets for s in STAGES if s.task is None}
ALWAYS = {"SSH_AUTH_SOCK"}      # an agent socket is a credential too


def looks_secret(name: str) -> bool:
    upper = name.upper()
    if upper in ALWAYS:
        return True
    if upper in NOT_SECRET:
        return False
    return (upper.startswith(FAMILIES) or bool(_WORDS.search(upper)) or any(w in upper for w in _INSIDE))


def declared(stage: str, cfg: dict | None) -> set[str]:
    """The secret names a stage may have: its task's `secrets:`, or a controller stage's fixed list."""
    if cfg and cfg.get("secrets"):
        return set(cfg["secrets"])
    return set(CONTROLLER_SECRETS.get(stage, ()))


def scrub(environ, allowed=()) -> dict:
    """A copy of `environ` without what looks like a credential, except the names in `allowed`."""
    allowed = set(allowed)
    return {k: v for k, v in environ.items() if k in allowed or not looks_secret(k)}
