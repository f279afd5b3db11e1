"""SNMP telemetry collector (``ispstream collect snmp``).

Polls the IF-MIB of every device in the inventory (``poller``), receives traps and
informs (``traps``), and publishes ``IfStatsPoll``, ``DeviceStatus`` and ``TrapEvent``
records to Kafka. It only translates: rates, thresholds and alerts are the fault
flow's job.
"""

from __future__ import annotations

from ispstream.settings import Settings

__all__ = ["main"]


def main(settings: Settings, traps: bool = True) -> int:
    """Run the collector until SIGTERM or SIGINT (see ``collectors.snmp.app``)."""
    from collectors.snmp.app import main as run

    return run(settings, traps=traps)
