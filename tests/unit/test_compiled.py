"""Compiled builds of the hot modules run only while they match their source
(rating._compiled); the suite runs against the compiled builds in CI and once more as
Python (scripts/test.sh)."""

from __future__ import annotations

import importlib
import importlib.machinery
import json
import os
import sys

import pytest

from rating._compiled import HOT, PURE_ENV, source_hash, status, use_matching_builds

SUFFIX = importlib.machinery.EXTENSION_SUFFIXES[0]


@pytest.fixture
def package(tmp_path, monkeypatch):
    """A package ``hotpkg`` with ``mod.py`` and a build of it that cannot load (not a
    shared object): importing the build fails, importing the source gives 42."""
    pkg = tmp_path / "hotpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "mod.py").write_text("VALUE = 42\n")
    (pkg / f"mod{SUFFIX}").write_bytes(b"not a shared object")
    (pkg / "_compiled.json").write_text(json.dumps({"mod": source_hash(pkg / "mod.py")}))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sys, "meta_path", list(sys.meta_path))
    monkeypatch.delenv(PURE_ENV, raising=False)
    yield pkg
    for name in ("hotpkg", "hotpkg.mod"):
        sys.modules.pop(name, None)


def test_a_build_matching_its_source_is_imported(package):
    use_matching_builds("hotpkg", package)
    with pytest.raises(ImportError):  # the (unloadable) build was chosen
        importlib.import_module("hotpkg.mod")


def test_a_build_whose_source_changed_is_not_imported(package, caplog):
    (package / "mod.py").write_text("VALUE = 42  # edited\n")
    use_matching_builds("hotpkg", package)
    assert importlib.import_module("hotpkg.mod").VALUE == 42
    assert "source changed since it was built" in caplog.text


def test_without_a_manifest_no_build_is_trusted(package):
    (package / "_compiled.json").unlink()
    use_matching_builds("hotpkg", package)
    assert importlib.import_module("hotpkg.mod").VALUE == 42


def test_pure_python_on_request(package, monkeypatch):
    monkeypatch.setenv(PURE_ENV, "1")
    use_matching_builds("hotpkg", package)
    assert importlib.import_module("hotpkg.mod").VALUE == 42


def test_the_hot_modules_run_as_this_run_asks():
    """In CI the hot modules run compiled (what production runs, when it can build
    them); with ISPSTREAM_PURE_PYTHON=1 every one runs as Python."""
    how = status()
    assert set(how) == set(HOT)
    if os.environ.get(PURE_ENV, "") not in ("", "0"):
        assert set(how.values()) == {"python"}
    elif os.environ.get("CI") == "true":
        assert set(how.values()) == {"compiled"}, how
