"""Public functions, methods and classes carry docstrings (issue 11: at least 90% per module group).

Read from the source with ``ast`` (nothing is imported): a definition is public when its name does not start with
``_``; methods count when their class is public; functions nested in functions do not count. GROUPS lists the paths
checked, each a folder (all its ``.py`` files) or a file: the whole package (``nnssl``, ``planners``, ``trainers``)
and, within it, each room on its own, so that one room cannot fall below the target behind the others' coverage.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TARGET = 0.90

GROUPS = [
    "nnssl/data/phantoms",
    "nnssl/encoders",
    "nnssl/heads.py",
    "nnssl/losses",
    "nnssl/masking.py",
    "nnssl/ema.py",
    "nnssl/schedules.py",
    "nnssl/decoders.py",
    "nnssl/distillation.py",
    "nnssl/teacher.py",
    "nnssl/rotations.py",
    "nnssl/checkpoint.py",
    "nnssl/convert",
    "nnssl/io.py",
    "nnssl/errors.py",
    "nnssl/nnunet",
    "nnssl/analysis/dice_stats.py",
    "nnssl/analysis/cka.py",
    "nnssl/analysis/attention.py",
    "nnssl/analysis/fewshot.py",
    "nnssl/analysis/convergence.py",
    "nnssl/analysis/power.py",
    "nnssl/analysis/probe.py",
    "nnssl/analysis/pretraining.py",
    "nnssl/analysis/report/blocks.py",
    "nnssl/analysis/report/format.py",
    "nnssl/analysis/report/render.py",
    "nnssl/analysis/report/overview.py",
    "nnssl/analysis/report/attention.py",
    "nnssl/tasks",
    "nnssl/training",
    "nnssl/finetune",
    "nnssl/analysis",
    "nnssl/data",
    "nnssl/benchmark",
    "nnssl/cli",
    "nnssl",
    "planners",
    "trainers",
]

_DEFS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


def public_definitions(path: Path) -> list[tuple[str, bool]]:
    """(qualified name, has a docstring) for the public module-level functions and classes of ``path`` and the
    public methods of its public classes (nested classes included)."""
    found: list[tuple[str, bool]] = []

    def visit(body: list[ast.stmt], prefix: str) -> None:
        for node in body:
            if isinstance(node, _DEFS) and not node.name.startswith("_"):
                found.append((prefix + node.name, ast.get_docstring(node) is not None))
                if isinstance(node, ast.ClassDef):
                    visit(node.body, prefix + node.name + ".")

    visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)).body, "")
    return found


def group_files(group: str) -> list[Path]:
    """The ``.py`` files of a group: the file itself, or every one under the folder."""
    path = ROOT / group
    assert path.exists(), f"{group} does not exist: update GROUPS in {Path(__file__).name}"
    return sorted(path.rglob("*.py")) if path.is_dir() else [path]


@pytest.mark.parametrize("group", GROUPS)
def test_public_definitions_are_documented(group):
    total, missing = 0, []
    for path in group_files(group):
        for name, documented in public_definitions(path):
            total += 1
            if not documented:
                missing.append(f"{path.relative_to(ROOT)}: {name}")
    if total == 0:
        return
    coverage = 1 - len(missing) / total
    assert coverage >= TARGET, (f"{group}: {total - len(missing)}/{total} public definitions documented "
                                f"({coverage:.0%} < {TARGET:.0%}); undocumented:\n  " + "\n  ".join(missing))


def test_the_check_sees_undocumented_definitions(tmp_path):
    source = tmp_path / "m.py"
    source.write_text('class A:\n    """doc"""\n    def f(self):\n        pass\n    def _g(self):\n        pass\n\n'
                      'def h():\n    def inner():\n        pass\n\n\nclass _B:\n    def f(self):\n        pass\n')
    assert public_definitions(source) == [("A", True), ("A.f", False), ("h", False)]
