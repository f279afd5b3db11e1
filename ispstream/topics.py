"""Kafka topic names. One place; every producer and consumer imports from here."""

RADIUS_ACCT = "radius.acct"
USAGE_RATED = "usage.rated"
DEADLETTER = "deadletter"
ACTIONS = "actions"
ACTION_RESULTS = "actions.results"

ALL_TOPICS = (RADIUS_ACCT, USAGE_RATED, DEADLETTER, ACTIONS, ACTION_RESULTS)
