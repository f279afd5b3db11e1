"""Bytewax dataflows and the database sinks they write to."""

from rating._compiled import use_matching_builds

use_matching_builds(__name__, __path__[0])  # a stale build of a hot module never runs
