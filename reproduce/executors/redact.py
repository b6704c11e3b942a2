"""The log writer beside a stage run on this machine: the stage's output, secrets redacted, appended to its log.

    python -m reproduce.executors.redact LOG < output      # the values to redact: env REPRODUCE_REDACT (JSON)

It runs in a session of its own, not in the controller: a stage outlives a controller that dies (it has its own
session and its own watchdog), and so must the pipe it writes to, or its next line would break it.
"""
from __future__ import annotations

import json
import os
import signal
import sys

from reproduce.tasks import redact


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m reproduce.executors.redact LOG < output", file=sys.stderr)
        return 2
    secrets = json.loads(os.environ.pop("REPRODUCE_REDACT", "[]") or "[]")
    signal.signal(signal.SIGTERM, signal.SIG_IGN)   # it ends when the stage's last writer closes the pipe
    with open(argv[0], "a", encoding="utf-8") as out:
        for raw in sys.stdin.buffer:
            out.write(redact(raw.decode(errors="replace"), secrets))
            out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
