"""Run in an environment with the GPU stage's `datasets` / `huggingface_hub` (never the controller's, which has
no `datasets`): the first rows of each source and benchmark through the stage's own loader, record transform and
prompt template. Reads a JSON request on stdin, prints one JSON line.

    {"n": 3, "generate": {system_prompt, user_templates}, "eval": {...},
     "items": [{"kind": "source"|"benchmark", "item": {...}}]}
    -> {"versions": {...}, "results": [{"name", "ok", "records", "rows", "prompt_chars", "error", "error_type"}]}
"""
import concurrent.futures as cf
import json
import sys


def peek(kind: str, item: dict, n: int, gen: dict, ev: dict) -> dict:
    from reproduce.stages import generate
    from reproduce.stages.lib import problems

    out = {"name": item.get("name"), "ok": True}
    try:
        records = (problems.peek_source if kind == "source" else problems.peek_benchmark)(item, n)
        out["records"] = len(records)
        if records:
            if kind == "source" and records[0].get("published"):   # a published trace (STILL-2): no prompt is sent
                messages = [{"content": records[0]["problem"]}, {"content": records[0]["response"]}]
            elif kind == "source":
                messages = generate.messages(records[0], gen.get("system_prompt"), gen.get("user_templates") or {})
            else:
                from reproduce.stages import evaluate
                from reproduce.stages.lib import protocol

                ours = protocol.resolve(item, {"generate": gen, "eval": ev})["ours"]
                messages = evaluate.prompt_messages(records[0], ours, gen.get("system_prompt"))
            out["prompt_chars"] = sum(len(m["content"]) for m in messages)
        try:
            out["rows"] = problems.row_count(item)
        except Exception as e:   # noqa: BLE001 - a count the hub does not give is unknown, not a failure
            out["rows"], out["rows_error"] = None, f"{type(e).__name__}: {str(e)[:160]}"
    except BaseException as e:   # noqa: BLE001 - every failure is reported, one line each
        out.update(ok=False, error=str(e)[:400] or type(e).__name__, error_type=type(e).__name__,
                   gated=type(e).__name__ == "Gated")
    return out


def main() -> int:
    req = json.loads(sys.stdin.read())
    versions = {}
    for mod in ("datasets", "huggingface_hub"):
        try:
            versions[mod] = __import__(mod).__version__
        except ImportError:
            versions[mod] = None
    with cf.ThreadPoolExecutor(max_workers=8) as pool:
        futures = [pool.submit(peek, e["kind"], e["item"], int(req.get("n", 3)), req.get("generate") or {},
                               req.get("eval") or {})
                   for e in req["items"]]
        results = [f.result() for f in futures]
    print(json.dumps({"versions": versions, "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
