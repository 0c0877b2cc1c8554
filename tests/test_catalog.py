"""`robustdeploy list` and `--help` name every registration from the catalog, without importing torch; the catalog
and the registries must agree (a registration added without its catalog line fails here)."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

from robustdeploy.catalog import CATALOG


@pytest.mark.parametrize("kind", list(CATALOG))
def test_the_catalog_names_every_registration_and_where_it_is_made(kind):
    where, entries = CATALOG[kind]
    module, attr = where.split(":")
    registry = getattr(importlib.import_module(module), attr)
    assert registry.names() == sorted(entries), f"{kind}: registered {registry.names()}, catalogued {sorted(entries)}"
    for name, entry in entries.items():
        assert registry.get(name).__module__ == entry.module, (kind, name)
        assert entry.doc and "\n" not in entry.doc


@pytest.mark.parametrize("args", [["--help"], ["list"], ["list", "--long"], ["evaluate", "--help"]])
def test_help_and_list_start_without_torch(args):
    code = ("import sys\nfrom robustdeploy.cli import main\nsys.argv = ['robustdeploy', *sys.argv[1:]]\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\nprint('torch imported:', 'torch' in sys.modules)\n")
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip().endswith("torch imported: False"), proc.stdout[-500:] + proc.stderr[-500:]
    if args[0] == "list":
        for kind, (_, entries) in CATALOG.items():
            assert kind in proc.stdout and all(name in proc.stdout for name in entries)
