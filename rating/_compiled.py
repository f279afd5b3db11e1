"""Compiled builds of the hot modules, used only while they match their source.

``setup.py`` compiles the usage flow's hot modules (``HOT``) with Cython when it can and
records, in ``_compiled.json`` beside them, a SHA-256 of each source it compiled. A
package's ``__init__`` calls ``use_matching_builds``: a compiled module whose source
changed since the build (an edit, a checkout, no rebuild yet) is imported from its
``.py`` instead, with a warning, so a stale build never runs; ``ISPSTREAM_PURE_PYTHON=1``
imports every one from its ``.py``. Without a compiler nothing is compiled and all of it
runs as Python: the same code, slower.

``ispstream compiled`` prints each hot module and how it runs; with ``--check`` it exits
1 when a build no longer matches its source (the bootstrap then rebuilds).
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import json
import logging
import os
import sys
from pathlib import Path

log = logging.getLogger(__name__)

# The modules setup.py compiles (the usage flow's per-event path).
HOT = ("rating.sessions", "rating.tariff", "rating.shards", "rating.policies",
       "rating.cycles", "rating.snapshots", "pipelines.usage", "pipelines.sinks")
MANIFEST = "_compiled.json"
PURE_ENV = "ISPSTREAM_PURE_PYTHON"


def source_hash(path: Path) -> str:
    """SHA-256 of a source file's bytes (what the manifest records)."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


class _SourceFinder:
    """Finds the listed modules' ``.py`` files ahead of their compiled builds."""

    def __init__(self, sources: dict[str, str]) -> None:
        self.sources = sources

    def find_spec(self, name, path=None, target=None):
        source = self.sources.get(name)
        return None if source is None else importlib.util.spec_from_file_location(name,
                                                                                  source)


def _builds(directory: Path) -> set[str]:
    """Names (last part) of the modules in ``directory`` with a build beside their
    ``.py``."""
    return {f.name[: -len(suffix)] for suffix in importlib.machinery.EXTENSION_SUFFIXES
            for f in directory.glob(f"*{suffix}")
            if (directory / f"{f.name[: -len(suffix)]}.py").exists()}


def stale_builds(directory: str | Path) -> list[str]:
    """The modules in a package directory whose build must not be imported: their
    source differs from what was compiled (or there is no record of it)."""
    directory = Path(directory)
    builds = _builds(directory)
    if not builds:
        return []
    try:
        built = json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError):
        built = {}
    return sorted(m for m in builds
                  if built.get(m) != source_hash(directory / f"{m}.py"))


def use_matching_builds(package: str, directory: str | Path) -> None:
    """Make the package's stale compiled modules (all of them with
    ``ISPSTREAM_PURE_PYTHON=1``) import from their ``.py``; call from the package's
    ``__init__``, before it imports them."""
    directory = Path(directory)
    if os.environ.get(PURE_ENV, "") not in ("", "0"):
        modules = sorted(_builds(directory))
    else:
        modules = stale_builds(directory)
        if modules:
            log.warning("%s: compiled %s not used, its source changed since it was built "
                        "(rebuild: make bootstrap); running it as Python",
                        package, ", ".join(modules))
    if modules:
        sys.meta_path.insert(0, _SourceFinder(
            {f"{package}.{m}": str(directory / f"{m}.py") for m in modules}))


def status() -> dict[str, str]:
    """How each hot module runs: ``compiled`` or ``python`` (imports them)."""
    out = {}
    for name in HOT:
        mod = importlib.import_module(name)
        out[name] = "python" if (mod.__file__ or "").endswith(".py") else "compiled"
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--check" in argv:
        stale = []
        for package in sorted({n.split(".")[0] for n in HOT}):
            spec = importlib.util.find_spec(package)
            for directory in spec.submodule_search_locations or ():
                stale += [f"{package}.{m}" for m in stale_builds(directory)]
        for name in stale:
            print(f"{name}: its source changed since it was compiled")
        return 1 if stale else 0
    for name, how in status().items():
        print(f"{name}: {how}")
    return 0
