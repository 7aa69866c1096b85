"""nnssl_cka: per-stage CKA between a pretrained encoder and a (fabricated) nnU-Net fine-tuning run."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from nnssl.analysis.cka import read_cka_json
from nnssl.checkpoint import save_checkpoint
from nnssl.encoders.swin import EncoderConfig, SwinEncoder, build_swinunetr
from preprocessed_fixture import write_preprocessed_dataset

TRAINER, PLANS = "SwinSSLTrainer_5shot", "nnUNetSwinPlans_toy"


def _fold(results, dataset_name, network_weights, enc_cfg):
    fold = results / dataset_name / f"{TRAINER}__{PLANS}__3d_fullres" / "fold_0"
    fold.mkdir(parents=True)
    enc = {k: v for k, v in enc_cfg.to_dict().items() if k != "in_channels"}
    (fold.parent / "plans.json").write_text(json.dumps(
        {"configurations": {"3d_fullres": {"patch_size": [32, 32, 32], "nnssl_encoder": enc}}}))
    torch.save({"network_weights": network_weights}, fold / "checkpoint_final.pth")
    return fold


@pytest.fixture
def setup(tmp_path, monkeypatch):
    pre = tmp_path / "pre"
    folder = write_preprocessed_dataset(pre, 991, cases=4, plans=PLANS)
    monkeypatch.setenv("nnUNet_preprocessed", str(pre))
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "results"))
    cfg = EncoderConfig.preset("tiny")
    torch.manual_seed(0)
    encoder = SwinEncoder(cfg)
    ckpt = tmp_path / "pretrained.pth"
    save_checkpoint(ckpt, {"method": "toy", "encoder_config": cfg.to_dict(), "encoder": encoder.swin_state_dict()})
    return tmp_path, folder, cfg, encoder, ckpt


def test_unchanged_encoder_has_cka_one_and_a_retrained_one_less(setup, capsys):
    tmp_path, folder, cfg, encoder, ckpt = setup
    from nnssl.cli.cka import main

    net = build_swinunetr(cfg, out_channels=2)
    net.load_state_dict(encoder.swin_state_dict(), strict=False)  # fine-tuning that did not move the encoder
    _fold(tmp_path / "results", folder.name, net.state_dict(), cfg)
    out = tmp_path / "cka" / "same.json"
    assert main(["--pretrained", str(ckpt), "-d", "991", "-tr", TRAINER, "-p", PLANS, "-f", "0", "--images", "8",
                 "--out", str(out)]) == 0
    doc = read_cka_json(out)
    assert doc["method"] == "toy" and doc["shots"] == "5" and doc["n_examples"] == 8
    np.testing.assert_allclose(np.diag(doc["cka"]["linear"]), 1.0, atol=1e-6)
    np.testing.assert_allclose(np.diag(doc["cka"]["unbiased"]), 1.0, atol=1e-6)

    torch.manual_seed(1)
    other = build_swinunetr(cfg, out_channels=2)  # an encoder unrelated to the pretrained one
    (tmp_path / "results" / folder.name / f"{TRAINER}__{PLANS}__3d_fullres" / "fold_0" / "checkpoint_final.pth").unlink()
    torch.save({"network_weights": {"_orig_mod." + k: v for k, v in other.state_dict().items()}},
               tmp_path / "results" / folder.name / f"{TRAINER}__{PLANS}__3d_fullres" / "fold_0" / "checkpoint_final.pth")
    out2 = tmp_path / "cka" / "other.json"
    assert main(["--pretrained", str(ckpt), "-d", "991", "-tr", TRAINER, "-p", PLANS, "-f", "0", "--images", "8",
                 "--out", str(out2)]) == 0
    deep = read_cka_json(out2)["cka"]["linear"][4, 4]
    assert deep < 0.999


def test_missing_run_is_a_clear_error(setup, capsys):
    tmp_path, folder, cfg, encoder, ckpt = setup
    from nnssl.cli.cka import main

    assert main(["--pretrained", str(ckpt), "-d", "991", "-tr", TRAINER, "-p", PLANS, "-f", "3",
                 "--out", str(tmp_path / "x.json")]) == 2
    assert "fine-tune first" in capsys.readouterr().err
