"""Every method page's "Reference settings" table agrees with the code.

documentation/methods/<name>.md has a section ``## Reference settings`` holding one table ``| setting | value |
source |``. Each row names a field of the method's optimisation recipe (``cls.recipe``, an ``OptimRecipe``) or of its
``Config`` dataclass, gives the value the code uses and cites where it comes from: ``repo@commit path:line`` in the
authors' code, or ``nnssl: <reason>`` for our own choices. The table must list every recipe field (except
``source``) and every config field, so a default changed in the code or on the page alone fails here.

Values are written so that ``parse_value`` reads them: numbers (``5e-4``, ``256``), fractions (``10/300``),
``true``/``false``, ``none``, bare words (``cosine``, ``per-parameter``) and tuples (``(0.9, 0.999)``).
"""
from __future__ import annotations

import dataclasses
import re
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest

from nnssl.recipes import OptimRecipe
from nnssl.tasks import get_task_class, method_names

PAGES = Path(__file__).resolve().parent.parent / "documentation" / "methods"
SECTION = "## Reference settings"
HEADER = ["setting", "value", "source"]
RECIPE_FIELDS = [f.name for f in dataclasses.fields(OptimRecipe) if f.name != "source"]
CITATION = re.compile(r"@[0-9a-f]{7,} \S+:\d+")
_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")
_WORD = re.compile(r"[a-z][a-z0-9_-]*")


def parse_value(text: str) -> Any:
    """A value cell -> bool, None, int/float, str or tuple of those; ValueError for anything else."""
    text = text.strip()
    if text.startswith("(") and text.endswith(")"):
        return tuple(parse_value(part) for part in text[1:-1].split(",") if part.strip())
    if text in ("true", "false"):
        return text == "true"
    if text == "none":
        return None
    if "/" in text:
        num, _, den = text.partition("/")
        if _NUMBER.fullmatch(num.strip()) and _NUMBER.fullmatch(den.strip()):
            return float(Fraction(num.strip()) / Fraction(den.strip()))
    if _NUMBER.fullmatch(text):
        return int(text) if re.fullmatch(r"[+-]?\d+", text) else float(text)
    if _WORD.fullmatch(text):
        return text
    raise ValueError(f"cannot read the value {text!r} (number, a/b, true/false, none, a word or a tuple)")


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def settings_rows(text: str) -> list[tuple[str, str, str]]:
    """The (setting, value, source) rows of the page's one Reference settings table; AssertionError if the section
    or its table is missing or malformed."""
    match = re.search(rf"^{re.escape(SECTION)}[ \t]*\n(.*?)(?=^## |\Z)", text, flags=re.S | re.M)
    assert match, f"no '{SECTION}' section"
    lines = match.group(1).splitlines()
    tables: list[list[str]] = []
    previous_was_row = False
    for line in lines:
        is_row = line.lstrip().startswith("|")
        if is_row and not previous_was_row:
            tables.append([])
        if is_row:
            tables[-1].append(line)
        previous_was_row = is_row
    assert len(tables) == 1, f"'{SECTION}' must hold exactly one table, found {len(tables)}"
    table = tables[0]
    assert _cells(table[0]) == HEADER, f"table header must be | setting | value | source |, got {table[0]!r}"
    assert len(table) > 2 and set(table[1].replace("|", "").strip()) <= set("-: "), "header separator missing"
    rows = []
    for line in table[2:]:
        cells = _cells(line)
        assert len(cells) == 3, f"a row needs 3 cells: {line!r}"
        setting = re.fullmatch(r"`([A-Za-z_][A-Za-z0-9_]*)`", cells[0])
        assert setting, f"the setting cell must be a field name in backticks: {line!r}"
        rows.append((setting.group(1), cells[1], cells[2]))
    return rows


def _same(expected: Any, written: Any) -> bool:
    if isinstance(expected, (tuple, list)):
        return isinstance(written, tuple) and len(written) == len(expected) and all(
            _same(e, w) for e, w in zip(expected, written))
    if expected is None or isinstance(expected, bool):
        return written is expected
    if isinstance(expected, (int, float)):
        return isinstance(written, (int, float)) and not isinstance(written, bool) and \
            written == pytest.approx(expected, rel=1e-9, abs=1e-15)
    return written == expected


def disagreements(name: str, text: str) -> list[str]:
    """Everything on method ``name``'s page (``text``) that differs from the code; empty when they agree."""
    cls = get_task_class(name)
    config = cls.Config()
    config_fields = [f.name for f in dataclasses.fields(config)]
    problems, seen = [], set()
    for setting, value, source in settings_rows(text):
        if setting in seen:
            problems.append(f"{setting}: listed twice")
        seen.add(setting)
        if setting in RECIPE_FIELDS:
            expected = getattr(cls.recipe, setting)
        elif setting in config_fields:
            expected = getattr(config, setting)
        else:
            problems.append(f"{setting}: neither an OptimRecipe field nor a field of {cls.Config.__name__}")
            continue
        try:
            written = parse_value(value)
        except ValueError as err:
            problems.append(f"{setting}: {err}")
            continue
        if not _same(expected, written):
            problems.append(f"{setting}: the page says {value!r}, the code has {expected!r}")
        if not source:
            problems.append(f"{setting}: empty source cell")
        elif not (CITATION.search(source) or source.startswith("nnssl:")):
            problems.append(f"{setting}: the source must cite repo@commit path:line or start with 'nnssl:' "
                            f"({source!r})")
    problems += [f"{field}: missing (OptimRecipe field)" for field in RECIPE_FIELDS if field not in seen]
    problems += [f"{field}: missing ({cls.Config.__name__} field)" for field in config_fields if field not in seen]
    return problems


@pytest.mark.parametrize("name", method_names())
def test_reference_settings_table_matches_the_code(name):
    page = PAGES / f"{name}.md"
    assert page.is_file(), f"{name} has no page {page}"
    problems = disagreements(name, page.read_text())
    assert not problems, f"{page.name} disagrees with the code:\n  " + "\n  ".join(problems)


@pytest.mark.parametrize("name", method_names())
def test_recipe_and_config_field_names_do_not_collide(name):
    cls = get_task_class(name)
    assert not set(RECIPE_FIELDS) & {f.name for f in dataclasses.fields(cls.Config)}, "a table row would be ambiguous"


def test_the_check_catches_a_changed_value_an_unknown_field_and_a_missing_source():
    text = (PAGES / "dino.md").read_text()
    assert not disagreements("dino", text)
    changed = re.sub(r"^(\| `base_lr` \| )5e-4( \|)", r"\g<1>1e-3\2", text, flags=re.M)
    assert changed != text and any(p.startswith("base_lr:") for p in disagreements("dino", changed))
    unknown = text.replace("| `out_dim` |", "| `out_dims` |", 1)
    assert {"out_dims", "out_dim"} <= {p.split(":")[0] for p in disagreements("dino", unknown)}
    uncited = re.sub(r"^(\| `student_temp` \| [^|]+\|)[^|]*\|", r"\1 |", text, flags=re.M)
    assert uncited != text and "student_temp: empty source cell" in disagreements("dino", uncited)
    no_citation = re.sub(r"^(\| `student_temp` \| [^|]+\|)[^|]*\|", r"\1 the paper |", text, flags=re.M)
    assert any(p.startswith("student_temp: the source must cite") for p in disagreements("dino", no_citation))


@pytest.mark.parametrize("text, value", [
    ("5e-4", 5e-4), ("256", 256), ("10/300", 10 / 300), ("true", True), ("none", None), ("cosine", "cosine"),
    ("per-parameter", "per-parameter"), ("(0.9, 0.999)", (0.9, 0.999)), ("(2048, 1024)", (2048, 1024)),
])
def test_parse_value(text, value):
    assert parse_value(text) == value


@pytest.mark.parametrize("text", ["0.04 -> 0.4", "`5e-4`", "True", "1e-4 per volume", ""])
def test_parse_value_refuses_prose(text):
    with pytest.raises(ValueError):
        parse_value(text)
