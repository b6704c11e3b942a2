"""The tag keys every launched resource carries (SkyPilot `labels:`, which clouds turn into instance tags or
labels), so provider billing can be grouped by run and stage. One definition, read by the task renderer and
by billing reconciliation."""
TAG_RUN = "reproduce-run"
TAG_STAGE = "reproduce-stage"


def tag_value(value: str) -> str:
    """A label value as launches write it: GCP's rules (lowercase letters, digits, '-' and '_', <= 63
    characters), which AWS tags also accept."""
    import re

    return re.sub(r"[^a-z0-9_-]", "-", str(value).lower())[:63]
