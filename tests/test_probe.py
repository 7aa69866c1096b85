"""Frozen-feature probes: the classifier math, token labelling, and nnssl_probe end to end on a fabricated dataset."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from nnssl.analysis import probe as P
from nnssl.checkpoint import save_checkpoint
from nnssl.encoders.swin import EncoderConfig, SwinEncoder
from preprocessed_fixture import write_preprocessed_dataset


# ----------------------------------------------------------------------------------------------------------------------
# math
# ----------------------------------------------------------------------------------------------------------------------
def _clusters(n_per_class: int, num_classes: int, dim: int, spread: float, seed: int):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(num_classes, dim)) * 3.0
    y = np.repeat(np.arange(num_classes), n_per_class)
    return centres[y] + spread * rng.normal(size=(y.size, dim)), y


def test_both_probes_separate_separable_features_and_are_at_chance_on_random_labels():
    x, y = _clusters(200, 3, 16, 0.5, seed=0)
    xt, yt = _clusters(100, 3, 16, 0.5, seed=0)  # same centres (same seed), new noise below
    xt = xt + 0.5 * np.random.default_rng(1).normal(size=xt.shape)
    train, test = P.standardise(x, xt)
    knn = P.knn_predict(train, y, test, 3, k=10)
    lin = P.ridge_predict(P.ridge_fit(train, y, 3), test)
    for pred in (knn, lin):
        assert P.balanced_accuracy(P.confusion(yt, pred, 3)) > 0.98
        assert P.macro_f1(P.confusion(yt, pred, 3)) > 0.98

    rng = np.random.default_rng(2)
    noise_x, noise_xt = rng.normal(size=(3000, 16)), rng.normal(size=(3000, 16))
    ry, ryt = rng.integers(0, 3, 3000), rng.integers(0, 3, 3000)  # labels unrelated to the features
    train, test = P.standardise(noise_x, noise_xt)
    for pred in (P.knn_predict(train, ry, test, 3), P.ridge_predict(P.ridge_fit(train, ry, 3), test)):
        assert abs(P.balanced_accuracy(P.confusion(ryt, pred, 3)) - 1 / 3) < 0.04


@pytest.mark.parametrize("weighted", [False, True])
def test_ridge_closed_form_equals_a_reference_least_squares_solve(weighted):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(60, 5)) + 2.0, rng.integers(0, 3, 60)
    w = P.class_balanced_weights(y) if weighted else np.ones(60)
    alpha = 0.3
    model = P.ridge_fit(x, y, 3, alpha, sample_weight=w if weighted else None)
    # reference: min sum_i w_i ||[x_i, 1] B - y_i||^2 + alpha sum(w) ||W||^2 (bias unpenalised) as one lstsq
    design = np.hstack([x, np.ones((60, 1))]) * np.sqrt(w)[:, None]
    penalty = np.hstack([np.eye(5), np.zeros((5, 1))]) * np.sqrt(alpha * w.sum())
    targets = np.eye(3)[y] * np.sqrt(w)[:, None]
    ref = np.linalg.lstsq(np.vstack([design, penalty]), np.vstack([targets, np.zeros((5, 3))]), rcond=None)[0]
    np.testing.assert_allclose(model.weight, ref[:5], atol=1e-10)
    np.testing.assert_allclose(model.bias, ref[5], atol=1e-10)


def test_class_balanced_weights_give_every_class_the_same_total():
    y = np.array([0] * 90 + [1] * 10)
    w = P.class_balanced_weights(y)
    assert w[y == 0].sum() == pytest.approx(w[y == 1].sum()) and w.sum() == pytest.approx(100)


def test_knn_is_cosine_and_breaks_ties_by_similarity():
    train = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    y = np.array([0, 0, 1, 1])
    # cosine: only the direction counts, not the length
    assert P.knn_predict(train, y, np.array([[100.0, 1.0], [0.01, 0.2]]), 2, k=1).tolist() == [0, 1]
    # k=4: 2 votes each; class 0's neighbours are the more similar ones
    assert P.knn_predict(train, y, np.array([[0.8, 0.3]]), 2, k=4).tolist() == [0]


def test_metrics_count_background_in_balanced_accuracy_and_not_in_macro_f1():
    y = np.array([0] * 8 + [1] * 2)
    everything_foreground = np.ones(10, dtype=int)
    conf = P.confusion(y, everything_foreground, 3)
    assert P.balanced_accuracy(conf) == pytest.approx(0.5)  # recall 0 (background) and 1 (class 1); class 2 absent
    assert P.macro_f1(conf) == pytest.approx(2 * 2 / (2 + 10))  # class 1 only (present, foreground)
    perfect = P.confusion(y, y, 3)
    assert P.balanced_accuracy(perfect) == 1.0 and P.macro_f1(perfect) == 1.0
    assert np.isnan(P.macro_f1(P.confusion(np.zeros(4, int), np.zeros(4, int), 2)))  # no foreground present


def test_case_bootstrap_of_the_difference_is_paired():
    rng = np.random.default_rng(0)
    n_cases, per_case = 6, 50
    y = np.tile(np.repeat([0, 1], per_case // 2), n_cases)
    case = np.repeat(np.arange(n_cases), per_case)
    good = np.where(rng.random(y.size) < 0.9, y, 1 - y)
    bad = rng.integers(0, 2, y.size)
    conf_good = P.case_confusions(y, good, case, n_cases, 2)
    conf_bad = P.case_confusions(y, bad, case, n_cases, 2)
    np.testing.assert_allclose(conf_good.sum(axis=0), P.confusion(y, good, 2))
    weights = P.case_weights(n_cases, 500, seed=0)
    assert weights.shape == (500, n_cases) and (weights.sum(axis=1) == n_cases).all()
    (a, b), diff = P.bootstrap_metric([conf_good, conf_bad], "balanced_accuracy", weights)
    assert a.value > 0.85 and abs(b.value - 0.5) < 0.1
    assert 0 < diff.low <= diff.value <= diff.high and P.beats_random(diff) == "yes"
    _, same = P.bootstrap_metric([conf_bad, conf_bad], "balanced_accuracy", weights)
    assert same.value == same.low == same.high == 0.0 and P.beats_random(same) == "no"
    _, single = P.bootstrap_metric([conf_good[:1], conf_bad[:1]], "macro_f1", weights[:, :1] * 0 + 1)
    assert np.isnan(single.low)  # one test case: no interval


# ----------------------------------------------------------------------------------------------------------------------
# tokens
# ----------------------------------------------------------------------------------------------------------------------
def test_token_labels_take_the_majority_and_drop_the_padding():
    seg = np.zeros((8, 8, 4), dtype=np.int16)  # stride 4 -> a (2, 2, 1) token grid of 64 voxels each
    seg[0:4, 0:4] = 1  # token (0, 0): all class 1
    seg[0:4, 4:8, 0:2] = 2
    seg[0:2, 4:8, 2] = 2  # token (0, 1): 40 voxels of class 2, 24 of background -> 2
    seg[4:8, 0:4] = -1
    seg[4:8, 0:4, 0:2] = 2  # token (1, 0): 32 labelled (class 2), 32 padding -> kept (half labelled), label 2
    seg[4:8, 4:8] = -1
    seg[4:8, 4:8, 0] = 1
    seg[4, 4, 1] = 1  # token (1, 1): 17 labelled voxels of 64 -> on the padding: dropped
    out = P.token_labels(seg, 4, num_classes=3)
    assert out.shape == (2, 2, 1)
    assert out[:, :, 0].tolist() == [[1, 2], [2, -1]]
    tie = np.ones((4, 4, 4), dtype=np.int16)
    tie[:, :, 2:] = 2  # 32 voxels of 1, 32 of 2 -> the lower label
    assert P.token_labels(tie[None], 4, 3).tolist() == [[[[1]]]]  # a leading batch axis is kept
    with pytest.raises(ValueError, match="not divisible"):
        P.token_labels(np.zeros((6, 8, 8)), 4, 2)


def test_balanced_subsample_fills_small_classes_first():
    labels = np.array([0] * 1000 + [1] * 30 + [2] * 200 + [-1] * 50)
    idx = P.balanced_subsample(labels, 300, np.random.default_rng(0))
    counts = np.bincount(labels[idx], minlength=3)
    assert counts.tolist() == [135, 30, 135] and (labels[idx] >= 0).all() and len(set(idx)) == len(idx)
    assert P.balanced_subsample(labels, 10_000, np.random.default_rng(0)).size == 1230  # all labelled tokens


# ----------------------------------------------------------------------------------------------------------------------
# nnssl_probe end to end
# ----------------------------------------------------------------------------------------------------------------------
TRAIN = [f"case_{i:03d}" for i in range(6)]
TEST = [f"case_{i:03d}" for i in range(6, 10)]


@pytest.fixture
def labelled(tmp_path, monkeypatch):
    """10 cases whose organ is 0.3 brighter under noise of SD 1: visible to a trained encoder, hard for a random one."""
    pre = tmp_path / "pre"
    folder = write_preprocessed_dataset(pre, 992, name="NoisyCT", cases=10, organ_contrast=0.3, noise=1.0)
    (folder / "splits_final.json").write_text(json.dumps([{"train": TRAIN, "val": TEST}]))
    monkeypatch.setenv("nnUNet_preprocessed", str(pre))
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "results"))
    return folder


def _checkpoint(path, encoder: SwinEncoder, seed: int = 0):
    return save_checkpoint(path, {"method": "toy", "encoder_config": encoder.cfg.to_dict(),
                                  "encoder": encoder.swin_state_dict(), "config": {"seed": seed, "crop": [32] * 3}})


def _train_on_labels(encoder: SwinEncoder, folder, steps: int = 15) -> None:
    """A few supervised steps on stage-2 tokens of the training cases: an encoder that has learnt the organ."""
    from nnssl.finetune.probe import load_labelled_case

    data = folder / "nnUNetSwinPlans_3d_fullres"
    cases = [load_labelled_case(data, c) for c in TRAIN]
    images, segs = [np.asarray(c[0]) for c in cases], [np.asarray(c[1])[0] for c in cases]
    head = torch.nn.Conv3d(encoder.out_channels[2], 2, 1)
    opt = torch.optim.AdamW(list(encoder.parameters()) + list(head.parameters()), lr=2e-3)
    rng = np.random.default_rng(0)
    encoder.train()
    for _ in range(steps):
        xs, ys = [], []
        for _ in range(2):
            i, start = rng.integers(len(images)), rng.integers(0, 17, 3)
            window = tuple(slice(s, s + 32) for s in start)
            xs.append(images[i][(slice(None),) + window])
            ys.append(P.token_labels(segs[i][window], 8, 2))
        logits = head(encoder(torch.from_numpy(np.stack(xs)).float())[2])
        loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(np.stack(ys)), ignore_index=-1,
                                                 weight=torch.tensor([1.0, 10.0]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    encoder.eval()


def test_random_encoder_is_the_initialisation_pretraining_started_from():
    from nnssl.finetune.probe import random_encoder

    cfg = EncoderConfig.preset("tiny")
    torch.manual_seed(7)  # as nnssl.training.loop.build_task seeds the run's encoder
    init = SwinEncoder(cfg)
    trained = {k: v + 1.0 for k, v in init.swin_state_dict().items()}
    ckpt = {"encoder_config": cfg.to_dict(), "encoder": trained, "config": {"seed": 7}}
    rebuilt = random_encoder(ckpt, in_channels=1, seed=7).swin_state_dict()
    assert all(torch.equal(rebuilt[k], v) for k, v in init.swin_state_dict().items())
    other = random_encoder(ckpt, in_channels=1, seed=8).swin_state_dict()
    assert not all(torch.equal(other[k], v) for k, v in init.swin_state_dict().items())
    two = random_encoder(ckpt, in_channels=2, seed=7)  # adapted like the pretrained encoder would be
    assert two.cfg.in_channels == 2


def test_probe_command_scores_a_trained_encoder_above_the_random_one(labelled, tmp_path, capsys):
    from nnssl.cli.probe import main

    cfg = EncoderConfig.preset("tiny")
    torch.manual_seed(0)
    encoder = SwinEncoder(cfg)
    args = ["-d", "992", "--crops-per-case", "2", "--bootstrap", "300"]

    # control: a "pretrained" checkpoint that is the initialisation itself -> the two encoders are the same
    untrained = _checkpoint(tmp_path / "untrained.pth", encoder)
    assert main(["--pretrained", str(untrained), "--out", str(tmp_path / "same.json"), *args]) == 0
    same = P.read_probe_json(tmp_path / "same.json")
    assert same["extra"]["split"] == "splits_final.json fold 0" and same["extra"]["test_cases"] == TEST
    assert same["stage"] == 2 and same["stride"] == 8 and same["tokens"]["test_per_class"].get("1", 0) > 0
    for probe in P.PROBES:
        d = same["probes"][probe]["difference"]["balanced_accuracy"]
        assert d.value == d.low == d.high == 0.0 and P.beats_random(d) == "no"

    _train_on_labels(encoder, labelled)
    trained = _checkpoint(tmp_path / "trained.pth", encoder)
    out = tmp_path / "probe" / "trained.json"
    assert main(["--pretrained", str(trained), "--out", str(out), "--method", "supervised", *args]) == 0
    printed = capsys.readouterr().out
    assert "knn" in printed and "linear" in printed and str(out) in printed
    doc = P.read_probe_json(out)
    assert doc["method"] == "supervised" and doc["extra"]["random_seed"] == 0
    # identical token sets for both encoders: the counts do not depend on the encoder
    assert doc["tokens"] == same["tokens"]
    for probe in P.PROBES:
        entry = doc["probes"][probe]
        assert entry["random"]["balanced_accuracy"].value == same["probes"][probe]["random"]["balanced_accuracy"].value
        diff = entry["difference"]["balanced_accuracy"]
        assert P.beats_random(diff) == "yes", (probe, diff)
        assert entry["pretrained"]["balanced_accuracy"].value > entry["random"]["balanced_accuracy"].value


def test_probe_split_without_splits_file_and_with_a_case_budget(labelled):
    from nnssl.data.preprocessed import find_source
    from nnssl.finetune.probe import probe_split

    (labelled / "splits_final.json").unlink()
    source = find_source(992)
    split = probe_split(source)
    assert split.train == [f"case_{i:03d}" for i in range(8)] and split.test == ["case_008", "case_009"]
    assert "first 80%" in split.rule
    small = probe_split(source, max_cases=5, seed=3)
    assert len(small.train) == 4 and len(small.test) == 1 and set(small.test) <= set(split.test)
    assert small == probe_split(source, max_cases=5, seed=3)  # a fixed seed gives the same cases


def test_probe_refuses_images_only_datasets_and_bad_stages(labelled, tmp_path, capsys):
    from nnssl.cli.probe import main

    pre = labelled.parent
    images_only = write_preprocessed_dataset(pre, 993, name="Unlabelled", cases=3)
    dj = json.loads((images_only / "dataset.json").read_text())
    (images_only / "dataset.json").write_text(json.dumps({**dj, "labels": {"background": 0}, "images_only": True}))
    cfg = EncoderConfig.preset("tiny")
    ckpt = _checkpoint(tmp_path / "c.pth", SwinEncoder(cfg))
    assert main(["--pretrained", str(ckpt), "-d", "993", "--out", str(tmp_path / "x.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "images-only" in err and "-d Dataset992_NoisyCT" in err
    assert main(["--pretrained", str(ckpt), "-d", "992", "--stage", "5", "--out", str(tmp_path / "x.json")]) == 2
    assert "stages 0" in capsys.readouterr().err
    assert main(["--pretrained", str(tmp_path / "nope.pth"), "-d", "992"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()
