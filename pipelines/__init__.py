"""Bytewax dataflows and the database sinks they write to."""
