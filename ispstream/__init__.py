"""ispstream kernel: settings, event contracts and topics, Kafka and DB plumbing, CLI."""

from ispstream.settings import Settings, get_settings

__all__ = ["Settings", "get_settings"]
__version__ = "0.1.0"
