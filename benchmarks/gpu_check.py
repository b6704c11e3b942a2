"""What one GPU really does, beside what the estimator assumes: training tokens/s and MFU, decode tokens/s.

    python benchmarks/gpu_check.py                 # on a lent GPU: a Qwen2.5-7B shape, random weights
    python benchmarks/gpu_check.py --tiny          # on a CPU, in seconds: a tiny Qwen2 shape (the wiring only)
    python benchmarks/gpu_check.py --json          # the same figures for a program

Needs only torch and transformers (and this checkout's costmodel, plain Python + PyYAML): no hub, no download.
The model is a Qwen2 built from a shape in costmodel/data/models.yaml with random weights (the speed of a
matmul does not depend on what the weights hold).
  train   full-parameter AdamW steps in bf16 autocast on packed sequences of --seq tokens, on a copy of the shape
          cut to --train-layers layers (Qwen2.5-7B with AdamW states does not fit one 80 GB GPU; 8 layers,
          3.0B parameters, need ~67 GB at the defaults; per-layer throughput is what MFU measures). MFU = tokens/s x costmodel's FLOPs per token
          (estimates.flops_per_token: 6 N + 6 L d S) / the GPU's dense BF16 peak (estimates.GPUS).
          Beside it: the MFU the estimator assumes for one process with packing, and for the recipe's
          ZeRO-3 + CPU-offload configuration.
  decode  HF `generate`, greedy, --decode-batch sequences of --new-tokens each, on the full shape in bf16.
          Beside it: estimates.decode_tok_s_per_gpu for this model and GPU at TP 1, a vLLM figure at ~100
          sequences in flight: HF generate at a small batch is expected well below it; raise --decode-batch to
          see how close batching gets.
Calibrating: a measured MFU or decode rate that differs from the assumed one is a reason to change the table in
costmodel/estimates.py (with this script's output, the GPU and the date as its source).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from costmodel import estimates, models  # noqa: E402

TINY = {"params_b": 0.0, "layers": 2, "hidden": 64, "intermediate": 128, "heads": 4, "kv_heads": 2, "vocab": 512}
GPU_NAMES = (("H200", "H200"), ("H100", "H100"), ("A100", "A100-80GB"))   # torch's device name -> estimates.GPUS


def bad(message: str):
    """Bad input: one line, exit 2 (the project's rule)."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def qwen2(shape: dict, layers: int, dtype):
    """A Qwen2ForCausalLM of `shape` with `layers` layers and random weights, built from a config (no hub)."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(vocab_size=shape["vocab"], hidden_size=shape["hidden"],
                         intermediate_size=shape["intermediate"], num_hidden_layers=layers,
                         num_attention_heads=shape["heads"], num_key_value_heads=shape["kv_heads"],
                         max_position_embeddings=32768, tie_word_embeddings=False, use_cache=True)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    return Qwen2ForCausalLM(config).to(dtype=dtype)


def sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def train(shape: dict, layers: int, seq: int, batch: int, steps: int, device: str) -> dict:
    import torch

    model = qwen2(shape, layers, torch.float32).to(device)          # fp32 master weights, bf16 compute
    model.gradient_checkpointing_disable()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device == "cuda")
    n_params = sum(p.numel() for p in model.parameters())
    ids = torch.randint(0, shape["vocab"], (batch, seq), device=device)
    warmup, elapsed = 2, 0.0
    for step in range(warmup + steps):
        sync(device)
        start = time.perf_counter()
        with torch.autocast(device_type=device, dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(device)
        if step >= warmup:
            elapsed += time.perf_counter() - start
        print(f"  train step {step + 1}/{warmup + steps}: loss {loss.item():.3f}", file=sys.stderr, flush=True)
    peak_mem = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None
    del model, opt
    if device == "cuda":
        torch.cuda.empty_cache()
    tok_s = batch * seq * steps / elapsed
    flops = estimates.flops_per_token(n_params / 1e9, layers, shape["hidden"], seq)
    return {"params_b": n_params / 1e9, "layers": layers, "seq": seq, "batch": batch, "steps": steps,
            "tokens_per_s": tok_s, "flops_per_token": flops, "achieved_tflops": tok_s * flops / 1e12,
            "peak_mem_gib": peak_mem}


def decode(shape: dict, layers: int, batch: int, prompt: int, new_tokens: int, device: str) -> dict:
    import torch

    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = qwen2(shape, layers, dtype).to(device).eval()
    ids = torch.randint(0, shape["vocab"], (batch, prompt), device=device)
    mask = torch.ones_like(ids)
    kwargs = dict(attention_mask=mask, do_sample=False, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                  pad_token_id=0, eos_token_id=None)
    with torch.no_grad():
        model.generate(ids, **{**kwargs, "max_new_tokens": 2, "min_new_tokens": 2})     # warm-up
        sync(device)
        start = time.perf_counter()
        out = model.generate(ids, **kwargs)
        sync(device)
        elapsed = time.perf_counter() - start
    made = (out.shape[1] - prompt) * batch
    return {"params_b": sum(p.numel() for p in model.parameters()) / 1e9, "layers": layers, "batch": batch,
            "prompt": prompt, "new_tokens": new_tokens, "tokens_per_s": made / elapsed}


def gpu_name(device: str) -> str | None:
    if device != "cuda":
        return None
    import torch

    name = torch.cuda.get_device_name(0)
    return next((ours for mark, ours in GPU_NAMES if mark in name), None)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="a tiny Qwen2 shape on the CPU: seconds, checks the wiring")
    ap.add_argument("--model", default="Qwen/Qwen2.5-7B-Instruct", help="a shape in costmodel/data/models.yaml")
    ap.add_argument("--train-layers", type=int, default=8, help="layers of the trained copy (default 8)")
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=2, help="sequences per training step")
    ap.add_argument("--steps", type=int, default=5, help="timed training steps (after 2 warm-up)")
    ap.add_argument("--decode-batch", type=int, default=32)
    ap.add_argument("--prompt", type=int, default=128, help="prompt tokens per decoded sequence")
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--gpu", help="the GPU's name in costmodel (H100, H200, A100-80GB); default: from torch")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    import torch

    device = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
    if args.tiny:
        shape, name = dict(TINY), "tiny Qwen2 (2 layers, hidden 64)"
        args.train_layers, args.seq, args.batch, args.steps = 2, 64, 2, 2
        args.decode_batch, args.prompt, args.new_tokens = 2, 8, 8
    else:
        known = models.known()
        if args.model not in known:
            bad(f"--model {args.model!r}: not in costmodel/data/models.yaml; known: {', '.join(known)}")
        shape, name = models.resolve(args.model), args.model
        if device == "cpu":
            bad("no GPU here (torch.cuda.is_available() is False): use --tiny on a CPU")
    for flag in ("train_layers", "seq", "batch", "steps", "decode_batch", "prompt", "new_tokens"):
        if getattr(args, flag) < 1:
            bad(f"--{flag.replace('_', '-')} {getattr(args, flag)}: expected a whole number >= 1")
    gpu = args.gpu or gpu_name(device)
    if gpu is not None and gpu not in estimates.GPUS:
        bad(f"--gpu {gpu!r}: expected one of {', '.join(estimates.GPUS)}")

    print(f"{name} on {torch.cuda.get_device_name(0) if device == 'cuda' else 'CPU'} "
          f"(torch {torch.__version__})", file=sys.stderr, flush=True)
    try:
        tr = train(shape, args.train_layers, args.seq, args.batch, args.steps, device)
        dec = decode(shape, shape["layers"], args.decode_batch, args.prompt, args.new_tokens, device)
    except torch.cuda.OutOfMemoryError:   # ~67 GB is the default's estimate: a smaller GPU needs a smaller run
        print(f"error: out of GPU memory with --train-layers {args.train_layers} --batch {args.batch} --seq "
              f"{args.seq} --decode-batch {args.decode_batch}: lower them", file=sys.stderr)
        return 1
    peak = estimates.GPUS[gpu].bf16_tflops if gpu else None
    tr["mfu"] = tr["achieved_tflops"] / peak if peak else None
    one_process, why_one = estimates.sft_mfu(0, False, True, False)
    recipe_mfu, why_recipe = estimates.sft_mfu(3, True, False, False)
    assumed_decode, why_decode = estimates.decode_tok_s_per_gpu(dec["params_b"], gpu, 1) if gpu else (None, "")
    result = {"model": name, "device": device, "gpu": gpu, "peak_bf16_tflops": peak, "train": tr, "decode": dec,
              "assumed": {"mfu_one_process_packing": [one_process, why_one],
                          "mfu_recipe_zero3_offload": [recipe_mfu, why_recipe],
                          "decode_tok_s_per_gpu_tp1": [assumed_decode, why_decode]}}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    mfu = f"{tr['mfu']:.3f}" if tr["mfu"] is not None else "n/a (no BF16 peak for this device; --gpu names one)"
    lines = [f"train   {tr['params_b']:.3g}B params ({tr['layers']} layers), {tr['batch']} x {tr['seq']} tokens a step: "
             f"{tr['tokens_per_s']:,.0f} tokens/s, {tr['achieved_tflops']:,.1f} TFLOPS achieved, MFU {mfu}"
             + (f", peak memory {tr['peak_mem_gib']:.1f} GiB" if tr["peak_mem_gib"] else ""),
             f"        assumed: MFU {one_process:g} one process + packing ({why_one}); "
             f"{recipe_mfu:g} for the recipe's ZeRO-3 + CPU offload ({why_recipe})",
             f"decode  {dec['params_b']:.3g}B ({dec['layers']} layers), HF generate, batch {dec['batch']} x "
             f"{dec['new_tokens']} new tokens: {dec['tokens_per_s']:,.0f} tokens/s",
             "        assumed: " + (f"{assumed_decode:,.0f} tokens/s/GPU at TP 1 ({why_decode}; vLLM at ~100 sequences "
                                    "in flight, not HF generate)" if gpu else "n/a on this device")]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
