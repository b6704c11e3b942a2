"""benchmarks/gpu_check.py --tiny on this CPU (stage environment: torch + transformers): the figures it prints are
costmodel's formulas applied to what it measured, and the estimator's assumptions beside them."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from costmodel import estimates  # noqa: E402

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tiny_run_measures_and_prices_with_costmodels_formulas(gpu_check, capsys):
    assert gpu_check.main(["--tiny", "--json", "--gpu", "H100"]) == 0    # --gpu: H100's peak, to price an MFU
    r = json.loads(capsys.readouterr().out)
    tr, dec = r["train"], r["decode"]
    assert r["device"] == "cpu" and tr["tokens_per_s"] > 0 and dec["tokens_per_s"] > 0
    assert tr["flops_per_token"] == estimates.flops_per_token(tr["params_b"], 2, 64, 64)
    assert tr["mfu"] == pytest.approx(tr["tokens_per_s"] * tr["flops_per_token"] / (989e12))
    assert r["assumed"]["mfu_one_process_packing"][0] == estimates.sft_mfu(0, False, True, False)[0]
    assert r["assumed"]["decode_tok_s_per_gpu_tp1"][0] == estimates.decode_tok_s_per_gpu(dec["params_b"], "H100", 1)[0]
    assert dec["new_tokens"] == 8 and dec["batch"] == 2


def test_text_names_measured_and_assumed(gpu_check, capsys):
    assert gpu_check.main(["--tiny"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("train ") and "tokens/s" in out[0] and "MFU n/a" in out[0]
    assert out[1].strip().startswith("assumed: MFU 0.38") and out[2].startswith("decode ")


@pytest.mark.parametrize("argv, named", [(["--model", "nope"], "'nope'"), (["--tiny", "--gpu", "V100"], "'V100'"),
                                         (["--model", "Qwen/Qwen2.5-7B-Instruct"], "use --tiny")])
def test_bad_input_is_one_line_exit_2(gpu_check, capsys, argv, named):
    with pytest.raises(SystemExit) as exit_info:
        gpu_check.main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1 and named in err
