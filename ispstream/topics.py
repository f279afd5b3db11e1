"""Kafka topic names. One place; every producer and consumer imports from here."""

RADIUS_ACCT = "radius.acct"
USAGE_RATED = "usage.rated"
DEADLETTER = "deadletter"
ACTIONS = "actions"
ACTION_RESULTS = "actions.results"
SNMP_IFSTATS = "snmp.ifstats"
SNMP_TRAPS = "snmp.traps"
ONU_OPTICAL = "onu.optical"
DEVICE_STATUS = "device.status"
ALERTS = "alerts"

ALL_TOPICS = (RADIUS_ACCT, USAGE_RATED, DEADLETTER, ACTIONS, ACTION_RESULTS, SNMP_IFSTATS,
              SNMP_TRAPS, ONU_OPTICAL, DEVICE_STATUS, ALERTS)
