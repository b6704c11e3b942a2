"""The published evaluation protocol, per benchmark, as data: how NovaSky scored Sky-T1-32B-Preview with
SkyThought's evaluator, each field with where it is written (shared/reference/sky-t1.md section 3; the prompt
texts in prompts.yaml, each with its commit and file).

    resolve(bench, recipe) -> {"ours": {field: value}, "published": {field: value},
                               "sources": {field: source}, "differs": [field, ...],
                               "differences": {field: what differs}}

Ours follows the published protocol wherever the recipe does not say otherwise: a benchmark entry's
temperature, n, top_p or template, eval.max_tokens, eval.system_prompt (else convert.system_prompt, the one the
student was trained with). The prompt fields are compared as the model reads them, byte for byte: the system
prompt's text, and each template rendered on the same problem body; `differences` says how each differing
field differs, so the eval table says "identical" only where it is. A benchmark this module does not know
gets the evaluator's defaults and the recipe's user template for its domain.
"""
from __future__ import annotations

from reproduce.stages.lib import prompts

ST_CLI = "ST@HEAD skythought/evals/cli.py SAMPLING_PARAMS_DEFAULT"
ST_REPRO = "ST@#25/#67 README: Sky-T1 on AIME and GPQA with --temperatures 0.7 --n 8"
ST_MATH = "ST@HEAD math_handler.py: math_equal(strip(extract_answer(generation)), strip(answer))"
LCB_SCORER = ("NovaSky-AI/SkyThought@0751518:skythought/tools/util/task_handlers.py LiveCodeBenchTaskHandler + "
              "util/livecodebench/testing_util.py: the private tests, stripped stdout equal / return value ==")


def _prompt(name: str) -> tuple[str, str]:
    return prompts.template(name), prompts.source(name)


# field -> (value, source). The system prompt is the one SkyThought evaluated NovaSky-AI/Sky-T1-32B-Preview with.
DEFAULTS = {
    "temperature": (0.0, ST_CLI), "top_p": (1.0, ST_CLI), "max_tokens": (32768, ST_CLI), "n": (1, ST_CLI),
    "system_prompt": (prompts.text("sky_t1_eval"), prompts.source("sky_t1_eval")),
    "dtype": ("float32", "ST@#67: evaluation in float32 by default (skythought/evals/README.md)"),
}
_LCB = {"template": _prompt("livecodebench_stdin"), "template_call_based": _prompt("livecodebench_call_based"),
        "scorer": ("lcb_unit_tests", LCB_SCORER)}
PUBLISHED = {
    "math500": {"template": _prompt("math500"), "scorer": ("math_equal", ST_MATH)},
    "aime24": {"template": _prompt("aime24"), "temperature": (0.7, ST_REPRO), "n": (8, ST_REPRO),
               "scorer": ("math_equal", "ST@init aime_handler.py (the math handler's check)")},
    "gpqa_diamond": {"template": _prompt("gpqa_diamond"), "temperature": (0.7, ST_REPRO), "n": (8, ST_REPRO),
                     "scorer": ("last_letter", "ST@HEAD gpqa_diamond_handler.py get_multiple_choice_answer")},
    "livecodebench_easy": _LCB, "livecodebench_medium": _LCB, "livecodebench_hard": _LCB,
    "olympiadbench_math_en": {"template": _prompt("olympiadbench_math_en"), "scorer": ("math_equal", ST_MATH)},
}
# Our graders (reproduce/stages/lib/grading.py) by domain, and the published scorer for a benchmark we do not know.
OURS_SCORER = {"math": "math_verify", "mcq": "letter", "code": "unit_tests"}
PUBLISHED_SCORER = {"math": "math_equal", "mcq": "last_letter", "code": "unit_tests"}

FIELDS = ("system_prompt", "template", "template_call_based", "temperature", "top_p", "n", "max_tokens", "scorer")
PROMPT_FIELDS = ("system_prompt", "template", "template_call_based")
_BODY = "\x00problem\x00"     # a body no template holds: what surrounds it is what the model reads of the template


def published(name: str, domain: str, user_templates: dict | None = None) -> tuple[dict, dict]:
    """(values, sources) of the published protocol for benchmark `name`."""
    spec = {**DEFAULTS, **PUBLISHED.get(name, {})}
    spec.pop("dtype")                           # the whole evaluator's: reported once, with the environment
    if "template" not in spec:
        spec["template"] = ((user_templates or {}).get(domain), "not published: the recipe's generate.user_templates")
    if "scorer" not in spec:
        spec["scorer"] = (PUBLISHED_SCORER[domain], "not published: SkyThought's scorer for the domain")
    return {k: v for k, (v, _) in spec.items()}, {k: s for k, (_, s) in spec.items()}


def rendered(field: str, value) -> str | None:
    """What the model reads of a prompt field: a system prompt as is, a template around the problem body."""
    if value is None or field == "system_prompt":
        return value
    return value.format(problem=_BODY)


def difference(ours: str | None, published_text: str | None) -> str | None:
    """None when the two texts are identical byte for byte, else one line saying where they part."""
    if ours == published_text:
        return None
    if ours is None or published_text is None:
        return "ours is none" if ours is None else "published is none"
    if ours.split() == published_text.split():
        return f"whitespace only: ours {len(ours)} chars, published {len(published_text)}"
    i = next((k for k, (a, b) in enumerate(zip(ours, published_text)) if a != b), min(len(ours), len(published_text)))
    show = lambda s: repr(s[max(0, i - 20):i + 30].replace(_BODY, "{problem}"))  # noqa: E731
    return f"from char {i}: ours {show(ours)}, published {show(published_text)}"


def resolve(bench: dict, recipe: dict) -> dict:
    ev = recipe.get("eval") or {}
    templates = (recipe.get("generate") or {}).get("user_templates") or {}
    pub, sources = published(bench["name"], bench["domain"], templates)
    ours = dict(pub)
    for key in ("temperature", "n", "top_p", "template", "template_call_based"):
        if bench.get(key) is not None:
            ours[key] = bench[key]
    if bench.get("top_p") is None and ev.get("top_p") is not None:
        ours["top_p"] = ev["top_p"]
    if ev.get("max_tokens") is not None:
        ours["max_tokens"] = ev["max_tokens"]
    ours["system_prompt"] = ev.get("system_prompt") or (recipe.get("convert") or {}).get("system_prompt")
    ours["scorer"] = OURS_SCORER[bench["domain"]]
    ours["temperature"], ours["top_p"] = float(ours["temperature"]), float(ours["top_p"])
    ours["n"], ours["max_tokens"] = int(ours["n"]), int(ours["max_tokens"])
    differences = {}
    for k in FIELDS:
        if k == "scorer" or k not in ours or k not in pub:
            continue
        if k in PROMPT_FIELDS:
            why = difference(rendered(k, ours[k]), rendered(k, pub[k]))
        else:
            why = None if ours[k] == pub[k] else f"ours {ours[k]}, published {pub[k]}"
        if why:
            differences[k] = why
    default_fields = sorted(k for k in sources if k in DEFAULTS and sources[k] == DEFAULTS[k][1])
    return {"ours": ours, "published": pub, "sources": sources, "differs": list(differences),
            "differences": differences, "default_fields": default_fields}
