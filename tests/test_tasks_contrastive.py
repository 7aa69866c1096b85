"""SimCLR, MoCo v3, CPC, rotation, SwinUNETR's recipe and MAE on the tiny encoder (CPU, 32^3-64^3 crops)."""
from __future__ import annotations

import math

import pytest
import torch

from nnssl.encoders.swin import EncoderConfig, SwinEncoder
from nnssl.rotations import ROTATIONS_4
from nnssl.tasks import get_task_class
from nnssl.tasks.mae import patchify, unpatchify

# Small heads keep each step well under a second on one core; the structure is the paper's.
SMALL = {
    "simclr": dict(proj_hidden_dim=64, proj_dim=32),
    "mocov3": dict(hidden_dim=64, proj_dim=32),
    "cpc": dict(code_size=64, context_channels=32, context_layers=2, stride=32, prediction_steps=1),
    "rotation": dict(head_hidden_dim=64),
    "swinunetr": dict(contrastive_dim=32),
    "mae": dict(decoder_dim=48, decoder_depth=2, decoder_heads=4),
}
CROPS = {
    "simclr": (4, 1, 32, 32, 32),
    "mocov3": (4, 1, 32, 32, 32),
    "cpc": (2, 1, 64, 32, 32),  # a 2 x 1 x 1 grid of 32^3 sub-volumes
    "rotation": (4, 1, 32, 32, 32),
    "swinunetr": (2, 1, 64, 32, 32),  # the inpainting decoder normalises the last stage: > 1 token
    "mae": (2, 1, 32, 32, 32),
}


def build(name: str, total_steps: int = 20, **overrides):
    torch.manual_seed(0)
    cls = get_task_class(name)
    task = cls(SwinEncoder(EncoderConfig.preset("tiny")), cls.Config(**{**SMALL[name], **overrides}))
    task.setup(total_steps)
    task.train()
    return task


def crops_for(name: str, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    b, c, d, h, w = CROPS[name]
    # Smooth-ish structure (a few blobs) plus noise, so views carry something to learn.
    x = torch.randn(b, c, d // 8, h // 8, w // 8, generator=g)
    x = torch.nn.functional.interpolate(x, size=(d, h, w), mode="trilinear", align_corners=False)
    return x + 0.1 * torch.randn(b, c, d, h, w, generator=g)


def optimiser(task, lr=1e-3):
    return torch.optim.AdamW([p for p in task.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)


@pytest.mark.parametrize("name", list(SMALL))
def test_one_step_finite_loss_and_encoder_changes(name):
    task = build(name)
    crops = crops_for(name)
    views = task.make_views(crops, torch.Generator().manual_seed(1))
    again = task.make_views(crops, torch.Generator().manual_seed(1))
    for key in views:  # views are reproducible from the generator
        torch.testing.assert_close(views[key], again[key])
    out = task(views, 0)
    assert set(out) >= {"loss"} and all(k == "loss" or k.startswith("loss/") for k in out)
    assert all(torch.isfinite(v).all() for v in out.values())
    before = {k: v.clone() for k, v in task.encoder().swin_state_dict().items()}
    opt = optimiser(task)
    opt.zero_grad()
    out["loss"].backward()
    first = task.encoder().swinViT.patch_embed.proj.weight
    assert first.grad is not None and first.grad.abs().sum() > 0, "no gradient reached the patch embedding"
    opt.step()
    task.on_step_end(0)
    after = task.encoder().swin_state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert "swinViT.patch_embed.proj.weight" in changed
    assert any(k.startswith("swinViT.layers4") for k in changed), "the last stage got no update"


@pytest.mark.parametrize("name, steps", [("simclr", 8), ("rotation", 8), ("mae", 8)])
def test_loss_falls_on_fixed_data(name, steps):
    task = build(name)
    views = task.make_views(crops_for(name), torch.Generator().manual_seed(2))
    opt = optimiser(task, lr=2e-3)
    losses = []
    for step in range(steps):
        out = task(views, step)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        task.on_step_end(step)
        losses.append(out["loss"].item())
    assert min(losses[-2:]) < 0.9 * losses[0], losses


# ---------------------------------------------------------------- MoCo v3
def test_moco_momentum_branch_gets_no_gradient_and_stays_in_eval():
    task = build("mocov3")
    assert not any(p.requires_grad for p in task.momentum_encoder.parameters())
    assert not any(p.requires_grad for p in task.momentum_projector.parameters())
    task.train()
    assert task.student.training and task.projector.training
    assert not task.momentum_encoder.training and not task.momentum_projector.training
    out = task(task.make_views(crops_for("mocov3"), torch.Generator().manual_seed(0)), 0)
    out["loss"].backward()
    assert all(p.grad is None for p in task.momentum_encoder.parameters())
    assert all(p.grad is None for p in task.momentum_projector.parameters())
    assert task.projector.net[0].weight.grad is not None


def test_moco_ema_update_equals_the_formula():
    task = build("mocov3", total_steps=11)
    views = task.make_views(crops_for("mocov3"), torch.Generator().manual_seed(0))
    opt = optimiser(task, lr=1e-2)
    out = task(views, 3)
    opt.zero_grad()
    out["loss"].backward()
    opt.step()
    old = {k: v.clone() for k, v in task.momentum_encoder.named_parameters()}
    old.update({f"proj.{k}": v.clone() for k, v in task.momentum_projector.named_parameters()})
    task.on_step_end(3)
    m = 1.0 - 0.5 * (1.0 + math.cos(math.pi * 3 / 10)) * (1.0 - 0.99)
    assert task.momentum_at(3) == pytest.approx(m)
    moved = 0
    for name, p in task.momentum_encoder.named_parameters():
        s = dict(task.student.named_parameters())[name]
        torch.testing.assert_close(p, m * old[name] + (1 - m) * s.detach())
        moved += int(not torch.equal(p, old[name]))
    for name, p in task.momentum_projector.named_parameters():
        s = dict(task.projector.named_parameters())[name]
        torch.testing.assert_close(p, m * old[f"proj.{name}"] + (1 - m) * s.detach())
    assert moved > 0


def test_moco_momentum_schedule_is_indexed_by_global_step():
    task = build("mocov3", total_steps=11)
    assert task.momentum_at(0) == pytest.approx(0.99)
    assert task.momentum_at(5) == pytest.approx(0.995)  # half-way on the cosine from 0.99 to 1
    assert task.momentum_at(10) == pytest.approx(1.0)
    assert task.momentum_at(50) == pytest.approx(1.0)  # held past the planned end
    values = [task.momentum_at(s) for s in range(11)]
    assert values == sorted(values)
    resumed = build("mocov3", total_steps=11)  # a resumed run recomputes the same schedule
    assert resumed.momentum_at(7) == task.momentum_at(7)


# ---------------------------------------------------------------- CPC
def test_cpc_prediction_does_not_see_its_target_subvolume():
    # 64 x 32 x 32 crop, 32^3 sub-volumes with stride 16: rows cover D in [0,32), [16,48), [32,64); row 2 is
    # predicted from context row 0 (k_min = 2: the first row sharing no voxel with the context).
    task = build("cpc", stride=16, prediction_steps=1)
    assert task.min_offset == 2
    task.eval()
    crops = crops_for("cpc")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        z = task.encode(task.make_views(crops, g)["patches"])
        pred = task.predict(z)[2]
        changed = crops.clone()
        changed[:, :, 32:] = torch.randn(changed[:, :, 32:].shape)  # the whole target sub-volume
        z2 = task.encode(task.make_views(changed, g)["patches"])
        pred2 = task.predict(z2)[2]
        torch.testing.assert_close(pred2, pred, rtol=0, atol=1e-5)
        assert not torch.allclose(z2[:, :, 2], z[:, :, 2], atol=1e-3)  # the target's own latent did change
        context_changed = crops.clone()
        context_changed[:, :, :16] += 1.0  # voxels only the context row sees
        pred3 = task.predict(task.encode(task.make_views(context_changed, g)["patches"]))[2]
        assert not torch.allclose(pred3, pred, atol=1e-4)


def test_cpc_context_network_is_causal_along_rows():
    task = build("cpc", prediction_steps=3)  # stride 32: k_min = 1, offsets 1, 2, 3
    assert task.offsets == [1, 2, 3]
    task.eval()
    z = torch.randn(2, 64, 5, 3, 3)
    with torch.no_grad():
        base = task.predict(z)
        for row in range(1, 5):
            perturbed = z.clone()
            perturbed[:, :, row] += 5.0
            preds = task.predict(perturbed)
            for k, p in preds.items():
                # predictions from context rows < row must not move, those from rows >= row must
                torch.testing.assert_close(p[:, :, :row], base[k][:, :, :row], rtol=0, atol=1e-5)
                if p.shape[2] > row:
                    assert not torch.allclose(p[:, :, row:], base[k][:, :, row:], atol=1e-4)


def test_cpc_grid_and_config_errors():
    task = build("cpc", stride=16)
    assert task.grid_shape((96, 64, 32)) == (5, 3, 1)
    with pytest.raises(ValueError, match="needs 32 \\+ 16 \\* n voxels"):
        task.grid_shape((64, 40, 32))
    with pytest.raises(ValueError, match="at least 64 voxels along axis 0"):
        task.grid_shape((32, 64, 64))
    with pytest.raises(ValueError, match="multiple of 32"):
        build("cpc", patch_size=48)


# ---------------------------------------------------------------- rotation / SwinUNETR / MAE views
def test_rotation_views_are_balanced_rotations():
    task = build("rotation")
    crops = crops_for("rotation")
    views = task.make_views(crops, torch.Generator().manual_seed(0))
    labels = views["label"]
    assert len(set(labels.tolist())) == len(labels)  # 4 samples, 10 classes: all distinct
    for i, lab in enumerate(labels.tolist()):
        back = task.table[lab].invert(views["image"][i])
        # intensity jitter is affine per sample: undoing the rotation gives a volume perfectly correlated with
        # the crop
        corr = torch.corrcoef(torch.stack([back.flatten(), crops[i].flatten()]))[0, 1]
        assert corr > 0.95


def test_swinunetr_views_cut_out_inside_the_mask_only():
    task = build("swinunetr")
    crops = crops_for("swinunetr")
    v = task.make_views(crops, torch.Generator().manual_seed(0))
    b = crops.shape[0]
    assert v["image"].shape == (2 * b, *crops.shape[1:]) and v["mask"].shape == (2 * b, 1, *crops.shape[2:])
    for i, lab in enumerate(v["rotation"].tolist()):
        torch.testing.assert_close(v["target"][i], ROTATIONS_4[lab].apply(crops[i % b]))
    outside = ~v["mask"].expand_as(v["image"])
    torch.testing.assert_close(v["image"][outside], v["target"][outside])
    assert v["mask"].any(dim=(1, 2, 3, 4)).all()  # every view has something to inpaint
    assert (v["image"][~outside] != v["target"][~outside]).float().mean() > 0.5


def test_mae_targets_mask_and_loss_on_masked_units_only():
    task = build("mae")
    crops = crops_for("mae")
    v = task.make_views(crops, torch.Generator().manual_seed(0))
    u = task.cfg.mask_patch
    torch.testing.assert_close(unpatchify(patchify(crops, u), u, 1, (2, 2, 2)), crops)
    t = task.targets(v["image"])
    torch.testing.assert_close(t.mean(-1), torch.zeros(t.shape[:2]), atol=1e-5, rtol=0)
    torch.testing.assert_close(t.std(-1), torch.ones(t.shape[:2]), atol=1e-3, rtol=0)
    m = task.unit_mask(v["mask"])
    assert m.shape == (2, 8) and (m.sum(1) == 6).all()  # round(0.75 * 8) units hidden per sample
    # Garbage predictions at visible units leave the loss unchanged.
    fixed = torch.randn(2, 8, u**3)
    task.decoder.forward = lambda feats: fixed.clone()
    base = task(v, 0)["loss"]
    noisy = fixed.clone()
    noisy[m == 0] += 100.0
    task.decoder.forward = lambda feats: noisy.clone()
    torch.testing.assert_close(task(v, 0)["loss"], base)
    expected = ((fixed - t).square().mean(-1) * m).sum() / m.sum()
    torch.testing.assert_close(base, expected)


@pytest.mark.parametrize("name", ["simclr", "mocov3", "swinunetr"])
def test_contrastive_tasks_refuse_a_batch_of_one(name):
    task = build(name)
    with pytest.raises(ValueError, match="at least 2"):
        task.make_views(torch.zeros(1, 1, 64, 32, 32), torch.Generator().manual_seed(0))
