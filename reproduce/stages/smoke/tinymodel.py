"""A tiny Qwen2-shaped model and BPE tokenizer, built on this machine (no hub), for `--scale smoke`.

    build_tiny_model("A/models/tiny-teacher", train_on=[(messages, response), ...])  # taught, ~10 s on CPU
    build_tiny_model("A/models/tiny-student")                                        # random weights, ~2 s

What made it work (shared/reference/environment.md, LLaMA-Factory section): a `tokenizers` BPE with ByteLevel
pre-tokenizer and decoder, vocab ~512, special tokens <|endoftext|> <|im_start|> <|im_end|>, wrapped in
PreTrainedTokenizerFast (eos <|im_end|>, pad <|endoftext|>) with a ChatML chat template, and
Qwen2Config(hidden 64, intermediate 128, 2 layers, 4 heads, 2 KV heads, tied embeddings), save_pretrained.
LLaMA-Factory's `qwen` template and vLLM read the folder like any Qwen2 checkpoint.

A random model never answers correctly, so rejection sampling would keep nothing. With `train_on`, a plain
torch loop teaches the model the given (prompt messages, response) pairs, loss on the response only, as
the chat template lays them out; give a problem both a right and a wrong response and sampling at T=0.7
picks either: a teacher that is mostly right and sometimes wrong (see generate.smoke_teacher).

The folder is cached: a marker `tiny_model.json` holds a fingerprint of the config, seed and training pairs;
a second call with the same inputs returns at once. Written to a temporary folder, then renamed.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# ChatML, as Qwen2 uses it (Qwen2.5's template minus tools and the default system prompt).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
CONFIG = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, tie_word_embeddings=True, max_position_embeddings=2048)
VOCAB_SIZE = 512
MARKER = "tiny_model.json"
LR = 3e-3        # with 300 steps of batch 16 the teacher recites ~24 smoke problems; 150 steps or 6e-3 did not
# Text the tokenizer always learns from, so a student built without training pairs still splits
# prompts, numbers and Python into sensible pieces.
BASE_CORPUS = [
    "What is 12 plus 7? We compute 12 + 7 = 19. The answer is \\boxed{19}.",
    "Return your final response within \\boxed{}. Read an integer n from standard input and print n times 2.",
    "```python\nn = int(input())\nprint(n * 2)\n```\ndef solve():\n    a, b = map(int, input().split())\n",
    "A) 1, B) 2, C) 3, D) 4 which is choice B. You are a helpful and harmless assistant. think step-by-step.",
    "0123456789 + - * / = ( ) [ ] { } the of and to in is that for it with as on be this are",
]


def fingerprint(config: dict, seed: int, steps: int, train_on) -> str:
    blob = json.dumps({"config": config, "vocab": VOCAB_SIZE, "seed": seed, "steps": steps, "lr": LR,
                       "template": CHAT_TEMPLATE, "train_on": train_on or []}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def build_tiny_model(out_dir, train_on: list[tuple[list[dict], str]] | None = None, *, steps: int = 300,
                     seed: int = 0, config: dict | None = None, log=None) -> Path:
    """Build (or reuse) a tiny Qwen2 model + tokenizer in `out_dir`; train it on `train_on` if given."""
    out = Path(out_dir)
    config = {**CONFIG, **(config or {})}
    train_on = [(list(m), r) for m, r in (train_on or [])]
    fp = fingerprint(config, seed, steps if train_on else 0, train_on)
    marker = out / MARKER
    if marker.is_file() and json.loads(marker.read_text()).get("fingerprint") == fp:
        return out
    log = log or (lambda msg: print(msg, file=sys.stderr))

    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    t0 = time.time()
    tok = build_tokenizer(BASE_CORPUS + [_render(m) + r for m, r in train_on])
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(Qwen2Config(
        vocab_size=len(tok), bos_token_id=None, eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tok.pad_token_id, **config))
    stats = {"trained_steps": 0}
    if train_on:
        stats = train(model, tok, train_on, steps=steps, seed=seed, log=log)
    model.generation_config = GenerationConfig(
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, do_sample=False)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        params = sum(p.numel() for p in model.parameters())
        (tmp / MARKER).write_text(json.dumps({
            "fingerprint": fp, "params": params, "config": config, "vocab_size": len(tok),
            "train_pairs": len(train_on), "build_s": round(time.time() - t0, 2), **stats}, indent=1))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"tiny model: {out} ({params:,} parameters, {len(train_on)} training pairs, {time.time() - t0:.1f} s)")
    return out


def build_bpe(texts: list[str] | None = None):
    """The BPE itself (the `tokenizers` library alone, no transformers): what the controller tokenizes the
    smoke SFT dataset with. The untrained student's is `build_bpe()` (BASE_CORPUS), as build_tiny_model makes it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(BASE_CORPUS if texts is None else texts, trainer=trainer)
    return bpe


def build_tokenizer(texts: list[str]):
    from transformers import PreTrainedTokenizerFast

    bpe = build_bpe(texts)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   additional_special_tokens=["<|im_start|>"], chat_template=CHAT_TEMPLATE,
                                   model_max_length=CONFIG["max_position_embeddings"])


def _render(messages: list[dict]) -> str:
    """The chat template by hand (same text as CHAT_TEMPLATE with add_generation_prompt)."""
    return "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages) + \
        "<|im_start|>assistant\n"


def train(model, tok, pairs, *, steps: int, seed: int, lr: float = LR, batch: int = 16, log=print) -> dict:
    """Teach `model` the responses: next-token loss on response tokens (and the closing <|im_end|>) only."""
    import torch

    rows = []
    for messages, response in pairs:
        prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
        r_ids = tok(response + "<|im_end|>", add_special_tokens=False)["input_ids"]
        rows.append((p_ids + r_ids, [-100] * len(p_ids) + r_ids))
    width = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), width), tok.pad_token_id)
    labels = torch.full((len(rows), width), -100)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (x, y) in enumerate(rows):
        ids[i, :len(x)], labels[i, :len(y)], mask[i, :len(x)] = torch.tensor(x), torch.tensor(y), 1

    gen = torch.Generator().manual_seed(seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)    # 64-wide matmuls: thread sync costs more than it gives (10 s vs 155 s on a busy
                                # 2-CPU machine, measured)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    model.train()
    t0, loss = time.time(), None
    for step in range(steps):
        pick = torch.randperm(len(rows), generator=gen)[:batch]
        loss = model(input_ids=ids[pick], attention_mask=mask[pick], labels=labels[pick]).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step(), sched.step(), opt.zero_grad()
        if step % 100 == 0 or step == steps - 1:
            log(f"tiny model: step {step + 1}/{steps} loss {loss.item():.3f}")
    model.eval()
    torch.set_num_threads(threads)
    return {"trained_steps": steps, "final_loss": round(loss.item(), 4), "train_s": round(time.time() - t0, 2)}
