"""nnssl_splits: a fixed split installed as nnU-Net's splits_final.json, checked against the preprocessed cases."""
from __future__ import annotations

import json
import re

import pytest

from nnssl.cli.splits import main
from nnssl.io import file_sha256
from tests.preprocessed_fixture import write_preprocessed_dataset


@pytest.fixture()
def dataset(tmp_path, monkeypatch):
    pre = tmp_path / "pre"
    pre.mkdir()
    monkeypatch.setenv("nnUNet_preprocessed", str(pre))
    folder = write_preprocessed_dataset(pre, 990, cases=4, shape=(16, 16, 16))
    return folder


def _split(path, folds):
    path.write_text(json.dumps(folds))
    return path


def test_installs_checks_and_refuses_to_replace_another_split(dataset, tmp_path, capsys):
    good = _split(tmp_path / "good.json", [{"train": ["case_000", "case_001", "case_002"], "val": ["case_003"]}])
    assert main(["-d", "990", "--file", str(good)]) == 0
    installed = dataset / "splits_final.json"
    assert json.loads(installed.read_text()) == json.loads(good.read_text())
    mtime = installed.stat().st_mtime_ns
    assert main(["-d", "990", "--file", str(good), "--sha256", file_sha256(good)]) == 0  # identical: left as it is
    assert installed.stat().st_mtime_ns == mtime
    other = _split(tmp_path / "other.json", [{"train": ["case_000", "case_003"], "val": ["case_001", "case_002"]}])
    capsys.readouterr()
    assert main(["-d", "990", "--file", str(other)]) == 2
    assert "holds another split" in capsys.readouterr().err and installed.stat().st_mtime_ns == mtime
    assert main(["-d", "990", "--file", str(other), "--overwrite"]) == 0
    assert json.loads(installed.read_text())[0]["val"] == ["case_001", "case_002"]


@pytest.mark.parametrize("folds, message", [
    ([{"train": ["case_000", "case_007"], "val": ["case_009"]}],
     "names 2 case\\(s\\) the dataset does not have: case_007, case_009"),
    ([{"train": ["case_000", "case_001"], "val": ["case_001"]}], "fold 0 trains and validates on the same case"),
    ([{"train": ["case_000"], "val": []}], "fold 0 has no validation cases"),
    ({"train": ["case_000"]}, "is not an nnU-Net split"),
])
def test_a_split_nnunet_could_not_train_on_is_refused_and_nothing_written(dataset, tmp_path, capsys, folds, message):
    bad = _split(tmp_path / "bad.json", folds)
    assert main(["-d", "990", "--file", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert re.search(message, err), err
    assert not (dataset / "splits_final.json").exists()


def test_a_split_edited_after_the_grid_read_it_is_refused(dataset, tmp_path, capsys):
    split = _split(tmp_path / "s.json", [{"train": ["case_000"], "val": ["case_001"]}])
    digest = file_sha256(split)
    _split(split, [{"train": ["case_001"], "val": ["case_000"]}])
    assert main(["-d", "990", "--file", str(split), "--sha256", digest]) == 2
    assert "changed since the grid read it" in capsys.readouterr().err
    assert not (dataset / "splits_final.json").exists()
