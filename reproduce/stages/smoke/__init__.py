"""Smoke-scale fixtures: the tiny model, the local OpenAI-compatible formatter, the made-up problems.
What lets the whole pipeline run on a CPU in seconds; nothing at full scale uses them."""
