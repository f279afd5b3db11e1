"""The project's own RADIUS dictionary (FreeRADIUS format, loadable by pyrad).

``dictionary`` is the entry point; it includes the RFC and vendor files beside it.
The collector's codec decodes by attribute number and does not need it; the NAS
simulator, the CoA/Disconnect client and the tests do.
"""

from __future__ import annotations

from pathlib import Path

DICTIONARY_DIR = Path(__file__).resolve().parent
MAIN = DICTIONARY_DIR / "dictionary"


def path(override: Path | None = None) -> Path:
    """The dictionary file to load: ``override`` (a file or a folder with a
    ``dictionary`` file) or the one shipped with the project."""
    if override is None:
        return MAIN
    override = Path(override)
    return override / "dictionary" if override.is_dir() else override


def load(override: Path | None = None):
    """A ``pyrad.dictionary.Dictionary`` of the shipped (or overriding) files."""
    from pyrad.dictionary import Dictionary

    return Dictionary(str(path(override)))
