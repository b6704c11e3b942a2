"""The published evaluation protocol, per benchmark, as data: how NovaSky scored Sky-T1-32B-Preview with
SkyThought's evaluator, each field with where it is written (shared/reference/sky-t1.md section 3).

    resolve(bench, recipe) -> {"ours": {field: value}, "published": {field: value},
                               "sources": {field: source}, "differs": [field, ...]}

Ours follows the published protocol wherever the recipe does not say otherwise: a benchmark entry's
temperature, n, top_p or template, eval.max_tokens, eval.system_prompt. `differs` names the fields where
ours and published part, so the eval table can say so. A benchmark this module does not know gets the
evaluator's defaults and the recipe's user template for its domain.
"""
from __future__ import annotations

ST_CLI = "ST@HEAD skythought/evals/cli.py SAMPLING_PARAMS_DEFAULT"
ST_REPRO = "ST@#25/#67 README: Sky-T1 on AIME and GPQA with --temperatures 0.7 --n 8"
ST_MATH = "ST@HEAD math_handler.py: math_equal(strip(extract_answer(generation)), strip(answer))"
LCB_TASK = "ST@HEAD tasks/livecodebench/livecodebench.yaml"

BOXED = "Return your final response within \\boxed{{}}. {problem}"
LCB_STDIN = ("Generate an executable Python function generated from the given prompt. The function should take "
             "stdin as input and print the output. Simply call the function after the definition. {problem}")
LCB_CALL = ("Generate an executable Python function generated from the given prompt. Return the function body "
            "without invoking it at the final solution. {problem}")

# field -> (value, source). "student" = the system prompt the model was trained with (convert.system_prompt):
# SkyThought's model_configs.yaml gives NovaSky-AI/Sky-T1-32B-Preview the STILL-2/Sky-T1 prompt.
DEFAULTS = {
    "temperature": (0.0, ST_CLI), "top_p": (1.0, ST_CLI), "max_tokens": (32768, ST_CLI), "n": (1, ST_CLI),
    "system_prompt": ("student", "ST@HEAD skythought/evals/models/model_configs.yaml"),
    "dtype": ("float32", "ST@#67: evaluation in float32 by default (skythought/evals/README.md)"),
}
_LCB = {"template": (LCB_STDIN, LCB_TASK + " stdin_template"),
        "template_call_based": (LCB_CALL, LCB_TASK + " non_stdin_template"),
        "scorer": ("unit_tests", "ST@HEAD livecodebench_handler.py: every test passes")}
PUBLISHED = {
    "math500": {"template": (BOXED, "ST@HEAD tasks/math/math500.yaml (ST@#25)"), "scorer": ("math_equal", ST_MATH)},
    "aime24": {"template": ("{problem}\nReturn your final response within \\boxed{{}}",
                            "ST@init tasks/aime/aime.yaml sky_template (used for Sky-T1-32B-Preview)"),
               "temperature": (0.7, ST_REPRO), "n": (8, ST_REPRO),
               "scorer": ("math_equal", "ST@init aime_handler.py (the math handler's check)")},
    "gpqa_diamond": {"template": ("Return your final response within \\boxed{{}} and only include the letter choice "
                                  "(A, B, C, or D) as your final response. {problem}",
                                  "ST@HEAD tasks/gpqa_diamond/gpqa_diamond.yaml"),
                     "temperature": (0.7, ST_REPRO), "n": (8, ST_REPRO),
                     "scorer": ("last_letter", "ST@HEAD gpqa_diamond_handler.py get_multiple_choice_answer")},
    "livecodebench_easy": _LCB, "livecodebench_medium": _LCB, "livecodebench_hard": _LCB,
    "olympiadbench_math_en": {"template": (BOXED, "ST@HEAD tasks/olympiadbench/olympiadbench_math_en.yaml"),
                              "scorer": ("math_equal", ST_MATH)},
}
# Our graders (reproduce/stages/lib/grading.py) by domain, and the published scorer for a benchmark we do not know.
OURS_SCORER = {"math": "math_verify", "mcq": "letter", "code": "unit_tests"}
PUBLISHED_SCORER = {"math": "math_equal", "mcq": "last_letter", "code": "unit_tests"}

FIELDS = ("system_prompt", "template", "template_call_based", "temperature", "top_p", "n", "max_tokens", "scorer")


def published(name: str, domain: str, user_templates: dict | None = None) -> tuple[dict, dict]:
    """(values, sources) of the published protocol for benchmark `name`."""
    spec = {**DEFAULTS, **PUBLISHED.get(name, {})}
    spec.pop("dtype")                           # the whole evaluator's: reported once, with the environment
    if "template" not in spec:
        spec["template"] = ((user_templates or {}).get(domain), "not published: the recipe's generate.user_templates")
    if "scorer" not in spec:
        spec["scorer"] = (PUBLISHED_SCORER[domain], "not published: SkyThought's scorer for the domain")
    return {k: v for k, (v, _) in spec.items()}, {k: s for k, (_, s) in spec.items()}


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
    if ev.get("system_prompt"):
        ours["system_prompt"] = "eval.system_prompt"
    ours["scorer"] = OURS_SCORER[bench["domain"]]
    ours["temperature"], ours["top_p"] = float(ours["temperature"]), float(ours["top_p"])
    ours["n"], ours["max_tokens"] = int(ours["n"]), int(ours["max_tokens"])
    differs = [k for k in FIELDS if k in ours and k in pub and ours[k] != pub[k] and k != "scorer"]
    default_fields = sorted(k for k in sources if k in DEFAULTS and sources[k] == DEFAULTS[k][1])
    return {"ours": ours, "published": pub, "sources": sources, "differs": differs, "default_fields": default_fields}
