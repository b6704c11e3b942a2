"""The preflight's datasets and models checks against the hub stand-in (tests/hub_standin.py, the real
`datasets` and `huggingface_hub` through HF_ENDPOINT; no request leaves loopback): a script-era dataset, a gated
one without a token, a missing model, and the sound setup, which passes. The peek runs in .venv-hub (the generate
lock's datasets and huggingface_hub) where it is built, else .venv-stage, named by REPRODUCE_PEEK_PYTHON."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from conftest import cli

pytest.importorskip("hub_standin", reason="the hub stand-in (tests/hub_standin.py, the real-data issue) is not here")
from hub_standin import HubStandin, Replica  # noqa: E402
from test_preflight import ALL, launches, only  # noqa: F401 - launches is a fixture

ROOT = Path(__file__).resolve().parents[1]
# datasets/huggingface_hub at the generate lock's versions (make's .venv-hub) where it is built, else the stage env's
STAGE_PYTHON = next((p for p in (ROOT / ".venv-hub" / "bin" / "python", ROOT / ".venv-stage" / "bin" / "python")
                     if p.exists()), ROOT / ".venv-stage" / "bin" / "python")
pytestmark = pytest.mark.skipif(not STAGE_PYTHON.exists(), reason="no .venv-hub or .venv-stage (make test builds them)")

# config.json figures as costmodel/data/models.yaml has them (huggingface.co/<id>/blob/main/config.json), with
# max_position_embeddings 32768 (both repositories' config.json); tokenizer_config.json with a ChatML template.
QWEN32 = {"num_hidden_layers": 64, "hidden_size": 5120, "intermediate_size": 27648, "num_attention_heads": 40,
          "num_key_value_heads": 8, "vocab_size": 152064, "max_position_embeddings": 32768,
          "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2"}
CHATML = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"


class ModelHub(HubStandin):
    """The stand-in, also serving model repositories (GET/HEAD /R/resolve/REV/PATH, as huggingface_hub's
    hf_hub_download asks), from a second folder of replicas."""

    def __init__(self, datasets_root: Path, models_root: Path):
        super().__init__(datasets_root)
        self.models = {f"{o.name}/{n.name}": Replica(f"{o.name}/{n.name}", n)
                       for o in sorted(models_root.iterdir()) for n in sorted(o.iterdir())}

    def _hub(self, h, method, path, query, body):
        if path.startswith(("/datasets/", "/api/datasets/")):
            return super()._hub(h, method, path, query, body)
        parts = path.lstrip("/").split("/", 2)
        rep = self.models.get("/".join(parts[:2])) if len(parts) == 3 else None
        if rep is None or not parts[2].startswith("resolve/"):
            return self._error(h, 404, "RepoNotFound", f"Repository not found: {path}", method == "HEAD")
        return self._resolve(h, rep, parts[2][len("resolve/"):], method == "HEAD")


BUILD = r"""
import importlib.util, pathlib, sys
spec = importlib.util.spec_from_file_location("hub_replicas", sys.argv[1])
replicas = importlib.util.module_from_spec(spec)
spec.loader.exec_module(replicas)
print(replicas.build(pathlib.Path(sys.argv[2])))
"""


@pytest.fixture(scope="module")
def replicas(tmp_path_factory):
    """tests/fixtures/hub/build.py's replicas, written by the stage environment (it has pyarrow; the controller's
    has not)."""
    import subprocess

    done = subprocess.run([str(STAGE_PYTHON), "-c", BUILD, str(ROOT / "tests" / "fixtures" / "hub" / "build.py"),
                           str(tmp_path_factory.mktemp("hub"))], capture_output=True, text=True, check=True)
    return Path(done.stdout.strip().splitlines()[-1])


@pytest.fixture
def model_hub(replicas, tmp_path, monkeypatch):
    """The stand-in with the dataset replicas and two model repositories; its variables set as conftest's `hub`
    sets them (every request of the real clients goes to it), a new HF cache, no HF_TOKEN."""
    models = tmp_path / "models"
    for mid in ("Qwen/QwQ-32B-Preview", "Qwen/Qwen2.5-32B-Instruct"):
        d = models / mid
        d.mkdir(parents=True)
        (d / "config.json").write_text(json.dumps(QWEN32))
        (d / "tokenizer_config.json").write_text(json.dumps({"chat_template": CHATML}))
    with ModelHub(replicas, models) as server:
        for k, v in server.env.items():
            monkeypatch.setenv(k, v)
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
        for var in ("HF_TOKEN", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
            monkeypatch.delenv(var, raising=False)
        yield server


@pytest.fixture
def peek_env(monkeypatch):
    monkeypatch.setenv("REPRODUCE_PEEK_PYTHON", str(STAGE_PYTHON))


def recipe_file(tmp_path, change=None) -> str:
    """The shipped recipe with every `problems` at 1 (the replicas hold a few rows), changed by `change`."""
    recipe = yaml.safe_load((ROOT / "reproduce" / "recipes" / "sky-t1-32b-preview.yaml").read_text())
    for item in recipe["sources"] + recipe["eval"]["benchmarks"]:
        item["problems"] = 1
    if change:
        change(recipe)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return str(path)


def lines(out: str) -> dict:
    return {line.split()[1].rstrip(":"): line for line in out.splitlines() if line.split()[:1] and
            line.split()[0] in ("passed", "FAILED", "skipped", "waived")}


def test_the_sound_hub_setup_passes(launches, model_hub, peek_env, monkeypatch, tmp_path, capsys):
    only(monkeypatch, "data", "models")
    monkeypatch.setenv("HF_TOKEN", model_hub.token)
    code, out, err = cli(capsys, "preflight", "--backend", "sky", "--recipe", recipe_file(tmp_path))
    assert code == 0, out + err
    found = lines(out)
    assert {k for k, v in found.items() if not v.startswith("passed")} == set(), out
    assert "datasets/gpqa_diamond" in found and "models/student-chat-template" in found
    paths = {path for _, _, path in model_hub.requests}   # every request reached the stand-in (none forwarded)
    assert "/Qwen/Qwen2.5-32B-Instruct/resolve/main/config.json" in paths
    assert any(p.startswith("/datasets/Idavidrein/gpqa/resolve/") for p in paths)


@pytest.mark.parametrize("defect, change, name, fix", [
    ("script-era dataset", lambda r: r["sources"].__setitem__(0, {
        "name": "scripted", "dataset": "standin-org/script_only", "split": "train", "domain": "math",
        "fields": {"problem": "problem", "answer": "answer"}, "problems": 1, "keep_rate": 0.8}),
     "datasets/scripted", "loading-script"),
    ("gated without a token", None, "datasets/gpqa_diamond", "HF_TOKEN"),
    ("missing model", lambda r: r["models"].__setitem__("student", {  # its shape stated, so the plan prices it
        "id": "Qwen/Qwen2.5-32B-Instruct-typo", "params_b": 32.8, "layers": 64, "hidden": 5120, "intermediate": 27648,
        "heads": 40, "kv_heads": 8, "vocab": 152064}), "models/student", "--set models.student.id="),
])
def test_hub_defects_fail_with_the_fix_and_launch_nothing(defect, change, name, fix, launches, model_hub, peek_env,
                                                          monkeypatch, tmp_path, capsys):
    only(monkeypatch, "data", "models")
    if defect != "gated without a token":
        monkeypatch.setenv("HF_TOKEN", model_hub.token)
    recipe = recipe_file(tmp_path, change)
    code, out, err = cli(capsys, "preflight", "--backend", "sky", "--recipe", recipe)
    assert code == 2, out + err
    assert name in lines(out) and lines(out)[name].startswith("FAILED") and fix in lines(out)[name], out
    code, out, err = cli(capsys, *ALL, "--recipe", recipe)
    assert code == 2 and launches == [] and "nothing launched" in err.splitlines()[-1], err
