"""ONU optics of OLTs (``ispstream collect onu``): SNMP table walks so far."""
