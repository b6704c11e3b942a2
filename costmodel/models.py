"""Model shapes are data: a recipe's `models.student` / `models.teacher` names an id, and everything downstream
(FLOPs, memory, decode throughput, tensor-parallel choice) reads the shape this module resolves.

    resolve("Qwen/Qwen2.5-7B-Instruct")                 # the shipped table, costmodel/data/models.yaml
    resolve({"id": "my/model", "config": "cfg.json"})   # a local HF config.json
    resolve({"id": "Qwen/Qwen2.5-7B-Instruct", "layers": 30})   # the table, one figure overridden

An id the table does not know, with no config.json and not every figure stated, is BadInput naming the known ids.
Mixtures of experts: `params_b` is every weight (what memory holds), `active_params_b` what one token passes
through (what FLOPs count).
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from costmodel.errors import BadInput

TABLE = Path(__file__).parent / "data" / "models.yaml"
SHAPE = ("params_b", "layers", "hidden", "intermediate", "heads", "kv_heads", "vocab")   # needed to price
OPTIONAL = ("active_params_b", "experts", "experts_per_token", "kv_cache_dim", "weight_bytes", "source")
KEYS = ("id", "config", *SHAPE, *OPTIONAL)                       # what a recipe's model entry may say
# config.json names (transformers' PretrainedConfig) -> ours
CONFIG_NAMES = {"num_hidden_layers": "layers", "hidden_size": "hidden", "intermediate_size": "intermediate",
                "num_attention_heads": "heads", "num_key_value_heads": "kv_heads", "vocab_size": "vocab"}


@lru_cache(maxsize=1)
def known() -> dict:
    import yaml

    return yaml.safe_load(TABLE.read_text())


def resolve(entry) -> dict:
    """A recipe's model entry (an id, or {id, config?, overrides}) -> every field of SHAPE and OPTIONAL."""
    if isinstance(entry, str):
        entry = {"id": entry}
    if not isinstance(entry, dict) or not entry.get("id"):
        raise BadInput(f"expected a model id or a mapping with `id`, got {entry!r}")
    unknown = sorted(set(entry) - set(KEYS))
    if unknown:
        raise BadInput(f"unknown key {unknown[0]!r} in the model entry; expected {', '.join(KEYS)}")
    mid = str(entry["id"])
    table = known()
    config = entry.get("config") or (Path(mid) / "config.json" if (Path(mid) / "config.json").is_file() else None)
    if mid in table:
        base = dict(table[mid])
    elif config:
        base = from_config(Path(config))
    else:
        base = {"source": "recipe"}
    given = {k: v for k, v in entry.items() if k not in ("id", "config", "source")}
    tied = base.pop("tied", False)
    s = {**base, **given, "id": mid}
    if "params_b" not in s and not s.get("experts") and all(k in s for k in SHAPE[1:]):
        s["params_b"] = round(dense_params(s, tied) / 1e9, 4)
    missing = [k for k in SHAPE if k not in s]
    if missing:
        raise BadInput(f"model {mid!r} has no known shape (missing {', '.join(missing)}): name one of "
                       f"{', '.join(table)}, give `config: PATH/config.json`, or state {', '.join(SHAPE)}")
    s.setdefault("active_params_b", s["params_b"])
    s.setdefault("experts", 0)
    s.setdefault("weight_bytes", 2)
    # figures that differ from the table's (a resolved entry read again changes nothing)
    changed = sorted(k for k in given if k in base and base[k] != given[k])
    if changed:
        s["source"] = f"{base['source']}; recipe overrides {', '.join(changed)}"
    if s["active_params_b"] > s["params_b"]:
        raise BadInput(f"model {mid!r}: active_params_b {s['active_params_b']} exceeds params_b {s['params_b']}")
    return s


def from_config(path: Path) -> dict:
    """Shape from a Hugging Face config.json. A mixture of experts needs params_b and active_params_b stated
    (the dense formula would count one expert): the entry gets no params_b, so resolve() asks for it."""
    try:
        cfg = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise BadInput(f"config {str(path)!r}: cannot read it as JSON ({e})") from None
    if not isinstance(cfg, dict):
        raise BadInput(f"config {str(path)!r}: expected a JSON object (a Hugging Face config.json)")
    s = {ours: cfg[theirs] for theirs, ours in CONFIG_NAMES.items() if isinstance(cfg.get(theirs), int)}
    s.setdefault("kv_heads", s.get("heads"))
    if s.get("kv_heads") is None:
        s.pop("kv_heads")
    experts = cfg.get("n_routed_experts") or cfg.get("num_local_experts") or cfg.get("num_experts")
    if experts:
        s["experts"], s["experts_per_token"] = int(experts), int(cfg.get("num_experts_per_tok") or 0)
    else:
        s["tied"] = bool(cfg.get("tie_word_embeddings", False))
    s["source"] = str(path)
    return s


def dense_params(s: dict, tied: bool = False) -> float:
    """Weights of a dense decoder: attention (q, o: h x h; k, v: h x kv), SwiGLU MLP (3 x h x i), embedding and,
    unless tied, the LM head. Biases and norms (< 0.1%) left out."""
    h, head_dim = s["hidden"], s["hidden"] // s["heads"]
    layer = 2 * h * h + 2 * h * s["kv_heads"] * head_dim + 3 * h * s["intermediate"]
    return s["layers"] * layer + (1 if tied else 2) * s["vocab"] * h
