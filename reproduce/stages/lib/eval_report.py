"""What the eval table says: scores with their standard errors, both graders, the protocol and its sources,
and what made the table (model, environment versions, seed, date, command).

Standard errors follow Miller, "Adding Error Bars to Evals" (arXiv 2411.00640): problems are a sample of
all problems, so the score's SE is the spread of per-problem pass rates over sqrt(problems); with n samples
per problem, the part of it that more samples would remove (`se_sampling`) is
sqrt(sum p_i(1-p_i)/(n-1)) / problems. A published score has an SE too; not published, it is taken as a
binomial over the same problems, sqrt(p(1-p)/problems) (one sample each: AIME's 43.3 = 13/30 looks like
one). The table flags a delta larger than 2 SE of the difference, sqrt(se_ours^2 + se_published^2).
"""
from __future__ import annotations

import math
import platform

PACKAGES = ("torch", "transformers", "vllm", "math-verify", "sympy", "latex2sympy2_extended", "datasets")


def pass_rates(samples: list[dict], key: str) -> list[float]:
    """Per problem, the share of its samples with `key` true (pass@1 over n)."""
    by_problem: dict = {}
    for s in samples:
        by_problem.setdefault(s["id"], []).append(bool(s[key]))
    return [sum(v) / len(v) for v in by_problem.values()]


def score_with_se(rates: list[float], n: int) -> dict:
    """Score x100, its SE over problems, and the sampling part of it."""
    k = len(rates)
    if not k:
        return {"score": 0.0, "se": None, "se_sampling": None}
    mean = sum(rates) / k
    se = math.sqrt(sum((r - mean) ** 2 for r in rates) / (k - 1) / k) if k > 1 else None
    se_sampling = math.sqrt(sum(r * (1 - r) for r in rates) / (n - 1)) / k if n > 1 else None
    return {"score": round(100 * mean, 2), "se": _pct(se), "se_sampling": _pct(se_sampling)}


def _pct(x):
    return None if x is None else round(100 * x, 2)


def compare(score: float, se: float | None, published: float | None, problems: int) -> dict:
    """delta vs published, the SE of the difference, and whether it is beyond 2 SE."""
    if published is None:
        return {"delta": None, "se_published": None, "se_delta": None, "beyond_2se": None}
    p = published / 100
    se_pub = 100 * math.sqrt(p * (1 - p) / problems) if problems else None
    se_delta = math.sqrt((se or 0) ** 2 + (se_pub or 0) ** 2) if se is not None and se_pub is not None else None
    delta = score - published
    return {"delta": round(delta, 2), "se_published": _round(se_pub), "se_delta": _round(se_delta),
            "beyond_2se": None if se_delta is None else abs(delta) > 2 * se_delta}


def _round(x):
    return None if x is None else round(x, 2)


def environment() -> dict:
    """Installed versions (from package metadata: nothing heavy is imported), Python and the platform."""
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    versions["platform"] = platform.platform(terse=True)
    return versions


# ---- table.md ------------------------------------------------------------------------------------------------

def _pm(score, se) -> str:
    return f"{score:.1f}" + ("" if se is None else f" ± {se:.1f}")


def _flag(b: dict) -> str:
    if b.get("beyond_2se") is None:
        return "" if b.get("delta") is None else "n/a"
    return "**yes**" if b["beyond_2se"] else "no"


def _template(t: str | None) -> str:
    """As the model reads it ({{}} is a literal {} in a format string)."""
    if t is None:
        return ""
    return "`" + t.replace("{{", "{").replace("}}", "}").replace("\n", "\\n").replace("|", "\\|") + "`"


def _system_prompt(text: str | None) -> str:
    """A system prompt by the name of the published one it is (prompts.yaml), else by its length."""
    from reproduce.stages.lib import prompts

    if not text:
        return "none"
    names = [k for k, v in prompts.published().items() if v["text"] == text]
    return f"`{names[0]}`" if names else f"{len(text)} chars"


def _prompt_verdict(protocol: dict) -> str:
    """"identical", or each prompt field that differs and how (protocol.resolve computed it)."""
    from reproduce.stages.lib.protocol import PROMPT_FIELDS

    if "differences" not in protocol:
        return "not compared (scored by an older version)"
    differences = protocol["differences"]
    parts = [f"{field}: {differences[field]}" for field in PROMPT_FIELDS if field in differences]
    if str((protocol.get("sources") or {}).get("template", "")).startswith("not published"):
        parts.append("template: SkyThought published none for this benchmark (the recipe's is used)")
    return "; ".join(parts) if parts else "identical"


def table_md(result: dict) -> str:
    """Ours vs published, each score with its SE, both graders, then the protocol and what made the table."""
    made = result.get("made") or {}
    lines = [f"# Evaluation: {result['model']}", "",
             f"Recipe {result.get('recipe')}, {result.get('scale')} scale. Score = pass@1 averaged over n samples, "
             "x100, ± its standard error over problems (and samples). Scored with the published protocol's "
             "scorer (SkyThought's `math_equal` for math) and with ours (math-verify); published: "
             "Sky-T1-32B-Preview, SkyThought README (ST@HEAD).", "",
             "| benchmark | score ± SE | ours (grader) ± SE | disagree | published | delta ± SE | beyond 2 SE | samples |",
             "|---|---:|---:|---:|---:|---:|:-:|---:|"]
    for name, b in result["benchmarks"].items():
        ours = b["by_scorer"].get(b["ours_scorer"], {})
        ours_cell = "" if b["ours_scorer"] == b["scorer"] else \
            f"{_pm(ours.get('score', 0.0), ours.get('se'))} ({b['ours_scorer']})"
        dis = b.get("disagreement")
        dis_cell = "" if not dis else f"{100 * dis['fraction']:.1f}% ({dis['samples']})"
        pub = "" if b["published"] is None else f"{b['published']:g}"
        delta = "" if b["delta"] is None else f"{b['delta']:+.1f}" + \
            ("" if b.get("se_delta") is None else f" ± {b['se_delta']:.1f}")
        lines.append(f"| {name} | {_pm(b['score'], b['se'])} ({b['scorer']}) | {ours_cell} | {dis_cell} | {pub} "
                     f"| {delta} | {_flag(b)} | {b['samples']} ({b['problems']} x {b['settings']['n']}) |")
    lines += ["", "## Protocol", "",
              "Ours, per benchmark; where it differs from the published protocol, the published value is in "
              "brackets.", "",
              "| benchmark | system prompt | template | T | top_p | n | max tokens | published scorer |",
              "|---|---|---|---:|---:|---:|---:|---|"]
    defaults = {}
    own = {}
    for name, b in result["benchmarks"].items():
        p = b["protocol"]
        o, pub, differs = p["ours"], p["published"], set(p["differs"])

        def cell(field, fmt=str):
            text = fmt(o.get(field))
            return text + (f" [{fmt(pub.get(field))}]" if field in differs else "")
        lines.append(f"| {name} | {cell('system_prompt', _system_prompt)} | {cell('template', _template)} "
                     f"| {cell('temperature', '{:g}'.format)} | {cell('top_p', '{:g}'.format)} | {cell('n')} "
                     f"| {cell('max_tokens')} | {pub['scorer']} |")
        for field, src in p["sources"].items():
            if field in p.get("default_fields", ()):
                defaults.setdefault(src, set()).add(field)
            else:
                own.setdefault(name, {}).setdefault(src, []).append(field)
    lines += ["", "Prompts as the model reads them (system prompt, template rendered on a problem), compared byte for "
              "byte with what SkyThought sent:"]
    lines += [f"- {name}: " + _prompt_verdict(b["protocol"]) for name, b in result["benchmarks"].items()]
    lines += ["", "Sources of the published protocol:"]
    lines += [f"- every benchmark unless noted, {', '.join(sorted(f))}: {src}" for src, f in defaults.items()]
    lines += [f"- {name}: " + "; ".join(f"{', '.join(f)}: {src}" for src, f in by_src.items())
              for name, by_src in own.items()]
    env = made.get("environment") or {}
    lines += ["", "## Made by", "",
              f"- model: `{result['model']}`; seed {made.get('seed')}; vLLM batch-invariant mode "
              f"{'on' if made.get('batch_invariant') else 'off'}",
              "- environment: " + ", ".join(f"{k} {v}" for k, v in env.items())]
    if made.get("published_dtype"):
        value, source = made["published_dtype"]
        lines.append(f"- dtype: the backend's (vLLM: the model's own); published {value} ({source})")
    runs: dict = {}
    for name, b in result["benchmarks"].items():
        m = b.get("made") or {}
        runs.setdefault((m.get("date"), m.get("backend"), m.get("gpu"), m.get("command")), []).append(name)
    for (date, backend, gpu, command), names in runs.items():
        lines.append(f"- {', '.join(names)}: {date}, backend {backend}" + (f" on {gpu}" if gpu else "")
                     + f": `{command}`")
    lines.append("")
    if result.get("scale") == "smoke":
        lines[2] += " Smoke scale: a tiny model on problems this project made; it proves the wiring, never the scores."
    return "\n".join(lines)
