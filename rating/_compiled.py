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


def _builds(directory: Path) -> dict[str, Path]:
    """Module name (last part) -> compiled file, for the builds in ``directory``."""
    out = {}
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        for f in directory.glob(f"*{suffix}"):
            out.setdefault(f.name[: -len(suffix)], f)
    return out


def stale_builds(directory: str | Path) -> dict[str, str]:
    """``{module: reason}`` for a package directory's compiled modules that must not be
    imported: their source differs from what was compiled (or ``ISPSTREAM_PURE_PYTHON``
    is set)."""
    directory = Path(directory)
    builds = _builds(directory)
    if not builds:
        return {}
    try:
        built = json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError):
        built = {}
    pure = os.environ.get(PURE_ENV, "") not in ("", "0")
    out = {}
    for mod in builds:
        py = directory / f"{mod}.py"
        if not py.exists():
            continue
        if pure:
            out[mod] = f"{PURE_ENV} is set"
        elif built.get(mod) != source_hash(py):
            out[mod] = "its source changed since it was compiled"
    return out


def use_matching_builds(package: str, directory: str | Path) -> None:
    """Make the package's stale compiled modules import from their ``.py`` (call from
    the package's ``__init__``, before it imports them)."""
    stale = stale_builds(directory)
    if not stale:
        return
    sources = {f"{package}.{m}": str(Path(directory) / f"{m}.py") for m in stale}
    sys.meta_path.insert(0, _SourceFinder(sources))
    changed = sorted(m for m, why in stale.items() if why != f"{PURE_ENV} is set")
    if changed:
        log.warning("%s: compiled %s not used, its source changed since it was built "
                    "(rebuild: make bootstrap); running it as Python",
                    package, ", ".join(changed))


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
        stale = {}
        for package in sorted({n.split(".")[0] for n in HOT}):
            spec = importlib.util.find_spec(package)
            for directory in spec.submodule_search_locations or ():
                stale.update({f"{package}.{m}": why
                              for m, why in stale_builds(directory).items()
                              if why != f"{PURE_ENV} is set"})
        for name, why in sorted(stale.items()):
            print(f"{name}: {why}")
        return 1 if stale else 0
    for name, how in status().items():
        print(f"{name}: {how}")
    return 0
