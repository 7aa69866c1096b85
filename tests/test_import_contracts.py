"""The package's layering and "never" rules hold (import-linter contracts in tests/import_contracts.ini), and no two
modules import each other, directly or through others."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grimp

CONTRACTS = Path(__file__).with_name("import_contracts.ini")


def test_import_contracts_are_kept():
    lint = Path(sys.executable).with_name("lint-imports")
    proc = subprocess.run([str(lint), "--config", str(CONTRACTS), "--no-cache"], capture_output=True, text=True,
                          cwd=CONTRACTS.parent.parent)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout


def test_no_import_circle():
    graph = grimp.build_graph("nnssl", cache_dir=None)
    circles = [(module, imported) for module in sorted(graph.modules)
               for imported in sorted(graph.find_modules_directly_imported_by(module))
               if imported != module and graph.chain_exists(importer=imported, imported=module)]
    # A package's __init__ that re-exports its own submodules is not a circle of rooms.
    circles = [(a, b) for a, b in circles if not (b.startswith(a + ".") or a.startswith(b + "."))]
    assert not circles, f"import circles: {circles[:5]}"
