"""The recipe is data: loading, scales and `--set` overrides."""
import pytest

from reproduce import recipe as recipes
from reproduce.errors import UserError


def test_sky_t1_recipe_carries_the_published_hyperparameters():
    r = recipes.load("sky-t1-32b-preview")
    sft = r["sft"]
    # sky-t1.md section 2: batch 1 x 12 x 8 GPUs = 96, lr 1e-5, 3 epochs, cutoff 16384, ZeRO-3 offload.
    assert sft["per_device_train_batch_size"] * sft["gradient_accumulation_steps"] * 8 == 96
    assert (sft["learning_rate"], sft["num_train_epochs"], sft["cutoff_len"]) == (1e-5, 3.0, 16384)
    assert (sft["zero_stage"], sft["cpu_offload"], sft["packing"]) == (3, True, False)
    assert r["models"]["teacher"]["id"] == "Qwen/QwQ-32B-Preview"
    assert r["generate"]["max_tokens"] == 16384
    assert {b["name"] for b in r["eval"]["benchmarks"]} >= {"math500", "aime24", "gpqa_diamond"}
    assert r["scale"] == "full"


def test_smoke_scale_shrinks_every_source_and_the_models():
    r = recipes.load(scale="smoke")
    assert all(s["problems"] == 4 for s in r["sources"])
    assert r["models"]["student"]["id"] == "tiny-qwen2"
    assert r["sft"]["bf16"] is False and r["sft"]["zero_stage"] == 0


def test_set_overrides_nested_keys_and_named_list_items():
    r = recipes.load(sets=["sft.num_train_epochs=6", "sources.apps.problems=10", "rewrite.batch=false"])
    assert r["sft"]["num_train_epochs"] == 6
    assert next(s for s in r["sources"] if s["name"] == "apps")["problems"] == 10
    assert r["rewrite"]["batch"] is False


@pytest.mark.parametrize("item, message", [
    ("sft.num_train_epoch=6", "did you mean 'sft.num_train_epochs'"),
    ("sft.learning_rate=fast", "expected a finite number > 0"),
    ("sft.packing=3", "expected true or false"),
    ("sources.nope.problems=3", "no item named 'nope'"),
    ("noequals", "expected dotted.key=value"),
])
def test_bad_overrides_name_the_key_and_what_is_accepted(item, message):
    with pytest.raises(UserError, match=message):
        recipes.load(sets=[item])


def test_unknown_recipe_lists_the_known_ones():
    with pytest.raises(UserError, match="sky-t1-32b-preview"):
        recipes.load("sky-t1-3b")


def test_a_recipe_file_by_path(tmp_path):
    text = recipes.dump(recipes.load()).replace("name: sky-t1-32b-preview", "name: my-variant")
    path = tmp_path / "my.yaml"
    path.write_text(text)
    assert recipes.load(str(path))["name"] == "my-variant"


def test_a_variant_states_only_what_it_changes(tmp_path):
    variant = tmp_path / "v.yaml"
    variant.write_text("base: sky-t1-32b-preview\nname: v\nset:\n  sft.packing: true\n"
                       "smoke:\n  sft.cutoff_len: 256\n")
    full, smoke = recipes.load(str(variant)), recipes.load(str(variant), scale="smoke")
    assert (full["name"], full["sft"]["packing"], full["sft"]["cutoff_len"]) == ("v", True, 16384)
    assert smoke["sft"]["cutoff_len"] == 256 and smoke["sources"][0]["problems"] == 4  # base smoke kept
    variant.write_text("base: sky-t1-32b-preview\nset:\n  sft.pakcing: true\n")
    with pytest.raises(UserError, match="did you mean 'sft.packing'"):
        recipes.load(str(variant))


def test_load_fills_every_default_once_and_a_stated_value_wins(tmp_path):
    from reproduce import recipe_schema

    assert set(recipe_schema.DEFAULTS) <= set(recipe_schema.RULES)   # a filled recipe loads again
    base = recipes.load()
    for key, value in recipe_schema.DEFAULTS.items():
        section, _, name = key.partition(".")
        assert name in base[section]
    assert (base["sft"]["num_nodes"], base["sft"]["method"], base["generate"]["num_nodes"]) == (1, "sft", 1)
    variant = tmp_path / "v.yaml"
    variant.write_text("base: sky-t1-32b-preview\nname: v\nset:\n  sft.num_nodes: 2\n  filter.where: cpu-node\n")
    v = recipes.load(str(variant))
    assert (v["sft"]["num_nodes"], v["filter"]["where"]) == (2, "cpu-node")
    assert recipes.load(str(variant))["filter"]["grade_after_rewrite"] is not v["filter"]["grade_after_rewrite"]
