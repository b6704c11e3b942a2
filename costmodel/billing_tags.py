"""The tag keys every launched resource carries (SkyPilot `labels:`, which clouds turn into instance tags or
labels), so provider billing can be grouped by run and stage. One definition, read by the task renderer and
by billing reconciliation."""
TAG_RUN = "reproduce-run"
TAG_STAGE = "reproduce-stage"
