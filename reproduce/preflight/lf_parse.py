"""Run in an environment with LLaMA-Factory (the sft stage's), never the controller's: parse the train config
on stdin (JSON) with LLaMA-Factory's own `get_train_args` and print one JSON line {ok, error, version}.

    python reproduce/preflight/lf_parse.py < config.json

Besides the parser: the template must be one LLaMA-Factory has (the parser does not check it; training would
fail with "Template X does not exist" after the GPUs are up) and the stage one it knows.
"""
import json
import sys


def main() -> int:
    cfg = json.loads(sys.stdin.read())
    try:
        import llamafactory
        from llamafactory.data.template import TEMPLATES
        from llamafactory.hparams import get_train_args
    except Exception as e:   # noqa: BLE001 - an environment without it says so
        print(json.dumps({"ok": False, "error": f"cannot import LLaMA-Factory: {type(e).__name__}: {e}"}))
        return 0
    version = getattr(llamafactory, "__version__", "?")
    try:
        if cfg.get("template") and cfg["template"] not in TEMPLATES:
            known = ", ".join(sorted(TEMPLATES)[:12])
            raise ValueError(f"Template {cfg['template']} does not exist (known: {known}, ...)")
        get_train_args(dict(cfg))
    except BaseException as e:   # noqa: BLE001 - the parser raises ValueError, SystemExit, ...
        print(json.dumps({"ok": False, "error": f"{type(e).__name__}: {str(e)[:400]}", "version": version}))
        return 0
    print(json.dumps({"ok": True, "version": version}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
