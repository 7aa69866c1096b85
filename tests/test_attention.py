"""Attention analyses: mean attention distance and organ localisation on hand-built maps with known geometry, the
recorder on MONAI's Swin (window geometry, shifted windows, padding, eager path), nnssl_attention on a fabricated
fine-tuning fold, and the report section."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from nnssl.analysis.attention import (
    AttentionAccumulator,
    BlockGeometry,
    attention_localisation,
    mean_attention_distance,
    read_attention_json,
    token_labels,
    uniform_attention,
    write_attention_json,
)
from nnssl.encoders.swin import EncoderConfig, SwinEncoder

# ----------------------------------------------------------------------------------------------------------------------
# hand-built maps
# ----------------------------------------------------------------------------------------------------------------------


def _cube(w: int) -> np.ndarray:
    """Token coordinates (1, w^3, 3) of one w x w x w window, in MONAI's (d, h, w) raster order."""
    return np.stack(np.meshgrid(*[np.arange(w)] * 3, indexing="ij"), -1).reshape(1, -1, 3)


def test_distance_of_a_hand_built_map_equals_its_hand_computed_value():
    # two tokens 3 mm apart; query 0 puts 0.75 on token 1, query 1 puts 0.5 on token 0
    attn = np.array([[[[0.25, 0.75], [0.5, 0.5]]]])  # (W=1, H=1, n=2, n=2)
    pos = np.array([[[0.0, 0.0, 0.0], [0.0, 3.0, 0.0]]])
    np.testing.assert_allclose(mean_attention_distance(attn, pos), [(0.75 * 3 + 0.5 * 3) / 2])

    # a 2x2x2 window with anisotropic token spacing (1, 2, 3) mm; head 0 attends to the opposite corner, head 1 to
    # itself, head 2 half to itself and half to its neighbour along the last axis
    coords = _cube(2)[0]
    n = len(coords)
    opposite = np.array([[np.all(coords[k] == 1 - coords[q]) for k in range(n)] for q in range(n)], dtype=float)
    along_w = np.array([[np.all(coords[k] == coords[q] ^ np.array([0, 0, 1])) for k in range(n)] for q in range(n)])
    attn = np.stack([opposite, np.eye(n), 0.5 * np.eye(n) + 0.5 * along_w])[None]  # (1, 3, 8, 8)
    spacing = np.array([1.0, 2.0, 3.0])
    got = mean_attention_distance(attn, (coords * spacing)[None])
    np.testing.assert_allclose(got, [math.sqrt(1 + 4 + 9), 0.0, 0.5 * 3.0])

    # the same through the accumulator: mm from the spacing x stride, window units from the window's extent
    geom = BlockGeometry("layers1", 0, 2, (2, 2, 2), (2, 2, 2), (0, 0, 0), coords[None], np.ones((1, n), bool), None)
    acc = AttentionAccumulator(spacing_mm=spacing / 2)  # stride 2 -> token spacing (1, 2, 3) mm
    acc.add(geom, attn[None], images=[0])
    stage = acc.summary()[0]
    np.testing.assert_allclose(stage["distance_mm"], [math.sqrt(14), 0.0, 1.5])
    # window-relative: a step of one token is half the 2-token window on each axis
    np.testing.assert_allclose(stage["distance_window"], [math.sqrt(3) / 2, 0.0, 0.25])
    assert stage["token_spacing_mm"] == [1.0, 2.0, 3.0] and stage["window_extent_mm"] == [2.0, 4.0, 6.0]
    assert stage["per_image_distance_mm"] == pytest.approx([(math.sqrt(14) + 1.5) / 3])
    # uniform attention over the window: the mean distance to the 8 corners (same from every corner)
    d = np.sqrt((((coords - coords[0]) * spacing) ** 2).sum(-1)).mean()
    assert stage["uniform_distance_mm"] == pytest.approx(d)


def test_padded_tokens_do_not_count():
    # three tokens on a line 1 mm apart, the last one padding: query 0's mass on it (0.5) is dropped and the rest
    # renormalised; the padded query is left out of the mean
    attn = np.array([[[[0.25, 0.25, 0.5], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]]])
    pos = np.array([[[0.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 2.0]]])
    valid = np.array([[True, True, False]])
    np.testing.assert_allclose(mean_attention_distance(attn, pos, valid), [(0.5 * 1.0 + 0.0) / 2])
    geom = BlockGeometry("layers1", 0, 1, (1, 1, 2), (1, 1, 3), (0, 0, 0), np.array([[[0, 0, 0], [0, 0, 1],
                                                                                      [0, 0, 2]]]), valid, None)
    acc = AttentionAccumulator(spacing_mm=[1.0, 1.0, 1.0])
    acc.add(geom, attn[None], images=[0])
    block = acc.summary()[0]["blocks"][0]
    assert block["padding_mass"] == pytest.approx([0.25])  # (0.5 + 0) / 2 real queries
    assert block["distance_mm"] == pytest.approx([0.25])


def test_localisation_is_one_inside_the_mask_and_the_window_share_under_uniform_attention():
    coords = _cube(4)[0]
    n = len(coords)
    organ = (coords[:, 0] < 2) & (coords[:, 1] < 2)  # 16 of the 64 tokens
    labels = organ.astype(int)[None]  # (W=1, n)
    concentrated = np.where(organ[None, :], 1.0, 0.0) * np.ones((n, 1))
    concentrated = (concentrated / concentrated.sum(-1, keepdims=True))[None, None]  # every query: the organ only
    assert attention_localisation(concentrated, labels)[1] == pytest.approx([1.0])
    # one window covering the whole grid: uniform attention gives the organ's volume share of the image
    uniform = uniform_attention(None, None, n=n)
    assert attention_localisation(uniform, labels)[1] == pytest.approx([16 / 64])

    # several windows: uniform attention gives, per organ query, the organ's share of that query's window (not of the
    # image). An 8^3 grid in windows of 4^3; the organ [2:6, 0:4, 0:4] fills half of two windows each.
    from nnssl.finetune.attention import window_geometry

    geom = window_geometry("layers1", 0, 2, (8, 8, 8), (4, 4, 4), (0, 0, 0), None)
    c = geom.coords
    lab = ((c[..., 0] >= 2) & (c[..., 0] < 6) & (c[..., 1] < 4) & (c[..., 2] < 4)).astype(int)
    assert lab.sum() == 64  # 1/8 of the image
    loc = attention_localisation(uniform_attention(None, geom.valid), lab, geom.valid)
    assert loc[1] == pytest.approx([0.5])

    # shifted windows: uniform over the keys MONAI's mask allows (same window and region), checked against the
    # regular partition offset by the shift (partial windows at the borders)
    from monai.networks.nets.swin_unetr import compute_mask

    mask = compute_mask([8, 8, 8], (4, 4, 4), (2, 2, 2), "cpu")
    geom = window_geometry("layers1", 1, 2, (8, 8, 8), (4, 4, 4), (2, 2, 2), mask)
    cell = np.floor_divide(geom.coords - 2, 4)  # offset partition: cells [-2, 2), [2, 6), [6, 10)
    same_cell = np.all(cell[:, :, None, :] == cell[:, None, :, :], -1)
    np.testing.assert_array_equal(geom.allowed, same_cell)
    lab = (geom.coords[..., 0] < 3).astype(int)  # slab 0..2 along depth: cells [-2,2) and [2,6) of the offset grid
    loc = attention_localisation(uniform_attention(geom.allowed, geom.valid), lab, geom.valid)
    # a query at depth 0-1 sees only depth 0-1 keys (all inside); at depth 2 it sees depth 2-5 (one of four inside)
    assert loc[1] == pytest.approx([(2 * 1.0 + 1 * 0.25) / 3])


def test_token_labels_take_the_majority_of_each_block():
    seg = np.zeros((4, 4, 4), dtype=int)
    seg[:2, :2, :2] = 2  # block (0,0,0): all label 2
    seg[2:, :2, :2] = 1
    seg[2, 0, 0] = -1  # block (1,0,0): 7 voxels 1 + one -1 (outside the non-zero region -> background)
    seg[:2, 2:, :2] = np.array([1, 1, 1, 1, 0, 0, 0, 0]).reshape(2, 2, 2)  # block (0,1,0): a tie -> smaller label
    lab = token_labels(seg, 2)
    assert lab.shape == (2, 2, 2)
    assert lab[0, 0, 0] == 2 and lab[1, 0, 0] == 1 and lab[0, 1, 0] == 0 and lab[1, 1, 1] == 0
    with pytest.raises(ValueError, match="not divisible"):
        token_labels(np.zeros((6, 4, 4), int), 4)


# ----------------------------------------------------------------------------------------------------------------------
# the recorder on MONAI's Swin
# ----------------------------------------------------------------------------------------------------------------------
def _record(encoder, x):
    from nnssl.finetune.attention import AttentionRecorder

    got = []
    with torch.no_grad(), AttentionRecorder(encoder, got.append):
        out = encoder(x)
    return got, out


def test_recorder_maps_window_tokens_back_to_the_grid_and_changes_nothing():
    """Window 3 on a 32^3 token grid: padding to 33 and a shift of 1, the hard case for the geometry."""
    torch.manual_seed(0)
    enc = SwinEncoder(EncoderConfig(feature_size=12, window_size=3)).eval()
    x = torch.randn(2, 1, 64, 64, 64)
    with torch.no_grad():
        ref = enc(x)
    inputs, windows = {}, {}
    blk = enc.swinViT.layers1[0].blocks[1]  # the shifted block of the first stage
    h1 = blk.register_forward_pre_hook(lambda m, a: inputs.__setitem__("x", a[0].detach()))
    h2 = blk.attn.register_forward_pre_hook(lambda m, a: windows.__setitem__("x", a[0].detach()))
    got, out = _record(enc, x)
    h1.remove(), h2.remove()
    assert all(torch.equal(a, b) for a, b in zip(ref, out))  # the recorder changes nothing
    assert [(b.geometry.stage, b.geometry.block) for b in got] == [(f"layers{s}", j) for s in range(1, 5)
                                                                   for j in range(2)]
    g = got[1].geometry
    assert g.grid == (32, 32, 32) and g.window == (3, 3, 3) and g.shift == (1, 1, 1) and g.stride == 2
    # every grid token is exactly one valid window token
    flat = g.coords[g.valid]
    assert len(flat) == 32 ** 3 and len(np.unique(flat @ np.array([32 * 32, 32, 1]))) == 32 ** 3
    # the window tokens MONAI attends over are the block's (normed) tokens at the coordinates the geometry names
    normed = blk.norm1(inputs["x"])  # (B, D, H, W, C)
    xw = windows["x"].view(2, g.coords.shape[0], g.coords.shape[1], -1)
    c = torch.from_numpy(np.minimum(g.coords, 31))
    gathered = normed[:, c[..., 0], c[..., 1], c[..., 2]]
    valid = torch.from_numpy(g.valid)
    torch.testing.assert_close(xw[:, valid], gathered[:, valid])
    assert torch.all(xw[:, ~valid] == 0)  # MONAI pads with zeros
    # masked pairs (different regions of the rolled grid) get ~0 weight; unmasked pairs lie within one window
    attn = got[1].attn.numpy()
    assert attn[:, ~np.broadcast_to(g.allowed[:, None], attn.shape[1:])].max() < 1e-30
    d = np.abs(g.coords[:, :, None, :] - g.coords[:, None, :, :]).max(-1)  # Chebyshev distance in tokens
    heavy = attn.max(axis=(0, 2)) > 1e-6
    assert d[heavy & g.valid[:, :, None] & g.valid[:, None, :]].max() <= 2  # window 3: at most 2 tokens apart


def test_recorder_uses_the_eager_path_and_restores_flash_attention():
    torch.manual_seed(0)
    enc = SwinEncoder(EncoderConfig.preset("tiny")).eval()
    blocks = [blk for s in range(1, 5) for blk in getattr(enc.swinViT, f"layers{s}")[0].blocks]
    for blk in blocks:
        blk.attn.use_flash_attention = True
    x = torch.randn(1, 1, 64, 64, 64)
    with torch.no_grad():
        fused = enc(x)
    got, out = _record(enc, x)
    assert len(got) == 8 and all(blk.attn.use_flash_attention for blk in blocks)
    for a, b in zip(fused, out):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    # the last stage's 4^3 grid is one window: MONAI clips the shift to 0, so neither block is shifted
    assert [b.geometry.shift for b in got[6:]] == [(0, 0, 0), (0, 0, 0)] and got[7].geometry.allowed is None
    np.testing.assert_allclose(got[0].attn.sum(-1).numpy(), 1.0, atol=1e-5)


# ----------------------------------------------------------------------------------------------------------------------
# nnssl_attention on a fabricated fine-tuning fold
# ----------------------------------------------------------------------------------------------------------------------
TRAINER, PLANS = "SwinSSLTrainer_5shot_draw2", "nnUNetSwinPlans_toy"


@pytest.fixture
def fold(tmp_path, monkeypatch):
    from nnssl.checkpoint import save_checkpoint
    from nnssl.encoders.swin import build_swinunetr
    from preprocessed_fixture import write_preprocessed_dataset

    pre = tmp_path / "pre"
    folder = write_preprocessed_dataset(pre, 991, cases=4, plans=PLANS)
    (folder / "splits_final.json").write_text(json.dumps([{"train": ["case_000", "case_001"],
                                                           "val": ["case_002", "case_003"]}]))
    monkeypatch.setenv("nnUNet_preprocessed", str(pre))
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "results"))
    cfg = EncoderConfig.preset("tiny")
    torch.manual_seed(0)
    encoder = SwinEncoder(cfg)
    ckpt = tmp_path / "pretrained.pth"
    save_checkpoint(ckpt, {"method": "toy", "encoder_config": cfg.to_dict(), "encoder": encoder.swin_state_dict()})
    net = build_swinunetr(cfg, out_channels=2)
    net.load_state_dict(encoder.swin_state_dict(), strict=False)  # fine-tuning that did not move the encoder
    fd = tmp_path / "results" / folder.name / f"{TRAINER}__{PLANS}__3d_fullres" / "fold_0"
    fd.mkdir(parents=True)
    enc = {k: v for k, v in cfg.to_dict().items() if k != "in_channels"}
    (fd.parent / "plans.json").write_text(json.dumps(
        {"configurations": {"3d_fullres": {"patch_size": [32, 32, 32], "nnssl_encoder": enc}}}))
    torch.save({"network_weights": net.state_dict()}, fd / "checkpoint_final.pth")
    return tmp_path, ckpt


def test_cli_writes_the_attention_of_both_encoders(fold, capsys):
    from nnssl.cli.attention import main

    tmp_path, ckpt = fold
    out = tmp_path / "attention" / "toy.json"
    assert main(["--pretrained", str(ckpt), "-d", "991", "-tr", TRAINER, "-p", PLANS, "-f", "0", "--images", "3",
                 "--out", str(out)]) == 0
    assert "mean attention distance" in capsys.readouterr().out
    doc = read_attention_json(out)
    assert (doc["method"], doc["shots"], doc["draw"], doc["n_images"]) == ("toy", "5", 2, 3)
    assert doc["organs"] == {"1": "organ"} and doc["spacing_mm"] == [2.0, 2.0, 2.0]
    assert doc["extra"]["held_out"] and set(doc["extra"]["crop_cases"]) <= {"case_002", "case_003"}
    pre, fine = (doc["encoders"][e]["stages"] for e in ("pretrained", "fine-tuned"))
    assert [s["name"] for s in pre] == ["layers1", "layers2", "layers3", "layers4"]
    assert [s["stride"] for s in pre] == [2, 4, 8, 16] and [s["heads"] for s in pre] == [3, 6, 12, 24]
    # 32^3 crops at 2 mm: stage 1 tokens 4 mm apart, windows of 4 tokens = 16 mm
    assert pre[0]["token_spacing_mm"] == [4.0] * 3 and pre[0]["window_extent_mm"] == [16.0] * 3
    for a, b in zip(pre, fine):  # the fine-tuning did not move the encoder
        np.testing.assert_allclose(a["distance_mm"], b["distance_mm"], rtol=1e-6)
    for s in pre:
        bound = math.sqrt(3) * (s["window"][0] - 1) * s["token_spacing_mm"][0]
        assert all(0 < v < bound for v in s["distance_mm"])
        assert len(s["per_image_distance_mm"]) == 3
        assert all(len(b["distance_mm"]) == s["heads"] for b in s["blocks"])
    loc = pre[0]["localisation"]["1"]
    assert 0 < loc["uniform"] < 1 and 0 < loc["attention"] <= 1 and loc["tokens"] > 0


def test_cli_errors_name_the_problem(fold, capsys):
    from nnssl.cli.attention import main

    tmp_path, ckpt = fold
    args = ["--pretrained", str(ckpt), "-d", "991", "-p", PLANS, "--out", str(tmp_path / "x.json")]
    assert main(args + ["-tr", TRAINER, "-f", "3"]) == 2
    assert "fine-tune first" in capsys.readouterr().err
    assert main(args + ["-tr", "nnUNetTrainer"]) == 2
    assert "error: trainer 'nnUNetTrainer' does not match" in capsys.readouterr().err
    for p in (tmp_path / "pre").rglob("*_seg.b2nd"):
        p.unlink()
    assert main(args + ["-tr", TRAINER, "-f", "0"]) == 2
    assert "unlabelled" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------------------------
# result files and the report section
# ----------------------------------------------------------------------------------------------------------------------
def _stages(scale: float, organ_share: float) -> list[dict]:
    stages = []
    for i, heads in enumerate((3, 6, 12, 24)):
        stride = 2 ** (i + 1)
        stages.append({"name": f"layers{i + 1}", "stride": stride, "grid": [32 // stride] * 3, "window": [4] * 3,
                       "heads": heads, "token_spacing_mm": [2.0 * stride] * 3,
                       "window_extent_mm": [8.0 * stride] * 3,
                       "distance_mm": [scale * stride * (1 + h / heads) for h in range(heads)],
                       "distance_window": [0.5 * scale] * heads, "uniform_distance_mm": 2.5 * stride,
                       "uniform_distance_window": 0.62, "per_image_distance_mm": [scale * stride] * 2,
                       "localisation": {"1": {"attention": organ_share, "uniform": 0.2, "tokens": 10}},
                       "blocks": [{"block": 0, "shift": [0, 0, 0], "padding_mass": [0.0] * heads}]})
    return stages


def test_report_section_reads_the_files_and_degrades_without_them(tmp_path):
    from nnssl.analysis.report import build_report
    from nnssl.analysis.results import load_results

    root = tmp_path / "results"
    (root / "attention").mkdir(parents=True)
    ds = "Dataset901_PhantomCTOrgans"
    for shots, scale in (("all", 1.0), ("5", 0.8)):
        for fold_id in ("0", "1"):
            write_attention_json(root / "attention" / f"{shots}_{fold_id}.json", dataset=ds, method="smit",
                                 shots=shots, fold=fold_id, n_images=2, image_size=[64] * 3, spacing_mm=[2.0] * 3,
                                 organs={1: "liver"},
                                 encoders={"pretrained": _stages(1.2, 0.3), "fine-tuned": _stages(scale, 0.6)})
    (root / "attention" / "broken.json").write_text("{")
    tree = load_results(root, read_logs=False)
    assert not tree.ignored  # the attention folder is not a dataset
    report, _ = build_report(tree, tmp_path / "out", attention_files=None)
    tables = {t.caption.split(":")[0]: t for t in report.tables()}
    dist = tables["Mean attention distance per stage (mean over blocks and heads; pooled over folds and draws), "
                  "absolute and window-relative; 'uniform' = uniform attention over the same window"]
    rows = [dict(zip(dist.header, r)) for r in dist.rows]
    first = next(r for r in rows if r["regime"] == "all cases" and r["encoder"] == "fine-tuned"
                 and r["stage"] == "layers1 (stride 2)")
    assert first["folds"] == "0, 1" and first["window (tokens = extent)"] == "4x4x4 = 16x16x16 mm"
    assert first["distance mm [95% CI over images]"] == "2.0 [2.0, 2.0]"  # 4 images of 1.0 x stride 2
    assert first["heads min-max mm"] == "2.0-3.3" and first["window-relative"] == "0.500"
    few = tables[f"{ds}, smit"]
    assert few.header[3:] == ["pretrained mm", "fine-tuned 5-shot mm", "fine-tuned all cases mm",
                              "5-shot minus all (window-relative)"]
    assert few.rows[0][-1] == "-0.100"  # 0.4 - 0.5
    loc = tables["Attention localisation"]
    assert loc.header[6:] == [f"layers{i} (stride {2 ** i})" for i in range(1, 5)] + ["query tokens (first stage)"]
    assert [r[:7] for r in loc.rows[:2]] == [[ds, "smit", "all cases", "0, 1", "liver", "pretrained", "0.300 (0.200)"],
                                             [ds, "smit", "all cases", "0, 1", "liver", "fine-tuned", "0.600 (0.200)"]]
    assert loc.rows[0][-1] == "20"  # 10 query tokens in each of the two folds
    notes = [b.text for b in report.blocks if getattr(b, "note", False)]
    assert any("Skipped broken.json" in n for n in notes)
    figures = [b.path.name for b in report.blocks if hasattr(b, "path")]
    assert {"attention_distance_Dataset901_PhantomCTOrgans_smit_all.png",
            "attention_localisation_Dataset901_PhantomCTOrgans_smit_5.png",
            "attention_fewshot_Dataset901_PhantomCTOrgans_smit.png"} <= set(figures)

    report, _ = build_report(tree, tmp_path / "out2", attention_files=[])
    assert any("No attention results found" in b.text for b in report.blocks if getattr(b, "note", False))
