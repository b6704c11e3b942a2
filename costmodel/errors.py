"""costmodel's own error for bad input; the CLI maps it to exit 2. (costmodel never imports reproduce.)"""


class BadInput(ValueError):
    """A value the caller can fix: an unknown accelerator, cloud or model, a negative budget. The stage programs
    raise it too (reproduce.stages.lib.common): one line on stderr, exit 2 (a subclass may use another code)."""
    exit_code = 2
