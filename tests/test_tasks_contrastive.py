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
    "cpc": dict(code_size=64, context_units=32, stride=32, prediction_steps=1),
    "rotation": dict(head_hidden_dims=(64, 32)),
    "swinunetr": dict(contrastive_dim=32),
    "mae": dict(decoder_dim=48, decoder_depth=2, decoder_heads=4),
}
CROPS = {
    "simclr": (4, 1, 32, 32, 32),
    "mocov3": (4, 1, 32, 32, 32),
    "cpc": (2, 1, 64, 32, 32),  # a 2 x 1 x 1 grid of 32^3 sub-volumes
    "rotation": (4, 1, 32, 32, 32),
    "swinunetr": (2, 1, 64, 64, 32),  # D == H (the rotated plane); the decoder's norm needs > 1 last-stage token
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
def test_moco_momentum_branch_gets_no_gradient_and_runs_in_train_mode():
    """MoCo v3 runs its momentum branch in train mode (moco-v3 main_moco.py:331-332): BatchNorm on batch statistics."""
    task = build("mocov3")
    assert not any(p.requires_grad for p in task.teacher.parameters())
    task.train()
    assert task.student.training and task.projector.training
    assert task.teacher["encoder"].training and task.teacher["projector"].training
    task.eval()
    assert not task.teacher["projector"].training
    task.train()
    out = task(task.make_views(crops_for("mocov3"), torch.Generator().manual_seed(0)), 0)
    out["loss"].backward()
    assert all(p.grad is None for p in task.teacher.parameters())
    assert task.projector.net[0].weight.grad is not None
    # the predictor ends with a non-affine BatchNorm, as MoCo v3's ViT predictor (moco/builder.py:122)
    assert isinstance(task.predictor.net[-1], torch.nn.BatchNorm1d) and not task.predictor.net[-1].affine


def test_moco_momentum_batchnorm_uses_batch_statistics_per_view():
    task = build("mocov3")
    views = task.make_views(crops_for("mocov3"), torch.Generator().manual_seed(0))
    bn = next(m for m in task.teacher["projector"].modules() if isinstance(m, torch.nn.BatchNorm1d))
    calls = []
    bn.register_forward_hook(lambda m, args, out: calls.append((args[0].detach().clone(), out.detach().clone())))
    task(views, 0)
    b = views["view1"].shape[0]
    assert [x.shape[0] for x, _ in calls] == [b, b]  # one call per view, each of the batch only
    for x, y in calls:  # normalised with the statistics of that view's batch, not the running ones
        expected = (x - x.mean(0)) / torch.sqrt(x.var(0, unbiased=False) + bn.eps) * bn.weight + bn.bias
        torch.testing.assert_close(y, expected, rtol=1e-4, atol=1e-4)


def test_moco_ema_update_equals_the_formula():
    task = build("mocov3", total_steps=11)
    views = task.make_views(crops_for("mocov3"), torch.Generator().manual_seed(0))
    opt = optimiser(task, lr=1e-2)
    out = task(views, 3)
    opt.zero_grad()
    out["loss"].backward()
    opt.step()
    old = {k: v.clone() for k, v in task.teacher["encoder"].named_parameters()}
    old.update({f"proj.{k}": v.clone() for k, v in task.teacher["projector"].named_parameters()})
    buffers = {k: v.clone() for k, v in task.teacher["projector"].named_buffers()}
    task.on_step_end(3)
    m = 1.0 - 0.5 * (1.0 + math.cos(math.pi * 3 / 10)) * (1.0 - 0.99)
    assert task.teacher.momentum(3) == pytest.approx(m)
    moved = 0
    for name, p in task.teacher["encoder"].named_parameters():
        s = dict(task.student.named_parameters())[name]
        torch.testing.assert_close(p, m * old[name] + (1 - m) * s.detach())
        moved += int(not torch.equal(p, old[name]))
    for name, p in task.teacher["projector"].named_parameters():
        s = dict(task.projector.named_parameters())[name]
        torch.testing.assert_close(p, m * old[f"proj.{name}"] + (1 - m) * s.detach())
    assert moved > 0
    # parameters only: the momentum branch keeps its own BatchNorm statistics (moco/builder.py:57-61)
    for name, b in task.teacher["projector"].named_buffers():
        assert torch.equal(b, buffers[name]), name


def test_moco_momentum_schedule_is_indexed_by_global_step():
    task = build("mocov3", total_steps=11)
    assert task.teacher.momentum(0) == pytest.approx(0.99)
    assert task.teacher.momentum(5) == pytest.approx(0.995)  # half-way on the cosine from 0.99 to 1
    assert task.teacher.momentum(10) == pytest.approx(1.0)
    assert task.teacher.momentum(50) == pytest.approx(1.0)  # held past the planned end
    values = [task.teacher.momentum(s) for s in range(11)]
    assert values == sorted(values)
    resumed = build("mocov3", total_steps=11)  # a resumed run recomputes the same schedule
    assert resumed.teacher.momentum(7) == task.teacher.momentum(7)


# ---------------------------------------------------------------- CPC
def test_cpc_prediction_does_not_see_its_target_subvolume():
    # 64 x 32 x 32 crop, 32^3 sub-volumes with stride 16: rows cover D in [0,32), [16,48), [32,64); row 2 is
    # predicted from the context of anchor row 0 (k_min = 2: the first row sharing no voxel with the context).
    task = build("cpc", stride=16, prediction_steps=1, volume_crop_fraction=1.0, patch_crop_fraction=1.0,
                 patch_flip_prob=0.0)
    assert task.min_offset == 2 and task.anchor_row(3) == 0
    task.eval()
    crops = crops_for("cpc")

    def predict(x):
        z = task.encode(task.make_views(x, torch.Generator().manual_seed(0))["patches"])
        _, h = task.context(task.context_sequences(z))
        return z, task.predictors[0](h[-1])

    with torch.no_grad():
        z, pred = predict(crops)
        changed = crops.clone()
        changed[:, :, 32:] = torch.randn(changed[:, :, 32:].shape)  # the whole target sub-volume
        z2, pred2 = predict(changed)
        torch.testing.assert_close(pred2, pred, rtol=0, atol=1e-5)
        assert not torch.allclose(z2[:, :, 2], z[:, :, 2], atol=1e-3)  # the target's own latent did change
        context_changed = crops.clone()
        context_changed[:, :, :16] += 1.0  # voxels only the context row sees
        assert not torch.allclose(predict(context_changed)[1], pred, atol=1e-4)


def test_cpc_context_is_taleb_pyramid_of_the_rows_above():
    """Column (h, w)'s context: the mirrored 3 x 3 neighbourhoods of rows 0..r-1, then its own latent of row r
    (Taleb's preprocess_cpc.py): rows below r and other columns of row r do not enter it."""
    task = build("cpc", prediction_steps=2)  # 4 rows: anchor row 1, predictions of rows 2 and 3
    assert task.anchor_row(4) == 1 and task.offsets == [1, 2]
    z = torch.randn(1, 64, 4, 3, 3)
    seq = task.context_sequences(z)
    assert seq.shape == (9, 10, 64)  # 3 x 3 columns, 9 + 1 terms, Taleb's "terms=10"
    centre = 1 * 3 + 1  # column (1, 1)
    torch.testing.assert_close(seq[centre, -1], z[0, :, 1, 1, 1])
    torch.testing.assert_close(seq[centre, :9], z[0, :, 0].reshape(64, 9).t())  # row 0's 3 x 3 around (1, 1)
    corner = seq[0]  # column (0, 0): neighbours mirrored at the border (-1 -> 1)
    torch.testing.assert_close(corner[0], z[0, :, 0, 1, 1])
    torch.testing.assert_close(corner[4], z[0, :, 0, 0, 0])
    perturbed = z.clone()
    perturbed[:, :, 2:] += 5.0
    perturbed[:, :, 1, 0, 0] += 5.0  # row r of another column
    torch.testing.assert_close(task.context_sequences(perturbed)[centre], seq[centre])


def test_cpc_subvolumes_are_jittered_and_flipped_deterministically():
    """Each sub-volume: a flip along the prediction axis D with p 0.5, then 7/8 of it kept at a random offset and
    padded back (Taleb)."""
    task = build("cpc", volume_crop_fraction=1.0)
    crops = crops_for("cpc")
    a = task.make_views(crops, torch.Generator().manual_seed(3))["patches"]
    b = task.make_views(crops, torch.Generator().manual_seed(3))["patches"]
    torch.testing.assert_close(a, b)  # the same generator state gives the same views (resume stays exact)
    background = crops.flatten(1).amin(1)
    p, keep = 32, 28
    plain = crops.unfold(2, p, p).unfold(3, p, p).unfold(4, p, p).permute(0, 2, 3, 4, 1, 5, 6, 7)
    flipped = total = 0
    for seed in (3, 4, 5, 6):
        a = task.make_views(crops, torch.Generator().manual_seed(seed))["patches"]
        for idx in range(a.shape[0] * a.shape[1]):
            i, row = divmod(idx, a.shape[1])
            view, src = a[i, row, 0, 0, 0], plain[i, row, 0, 0, 0]
            # the frame outside the centred 28^3 block is padding at the crop's background value
            assert torch.all(view[:2] == background[i]) and torch.all(view[30:] == background[i])
            inner = view[2:30, 2:30, 2:30]
            matches = [(fl, o) for fl in (False, True) for o in [(x, y, w) for x in range(5) for y in range(5)
                                                                  for w in range(5)]
                       if torch.equal(inner, (src.flip(0) if fl else src)[o[0]:o[0] + keep, o[1]:o[1] + keep,
                                                                           o[2]:o[2] + keep])]
            assert matches, f"seed {seed}: sub-volume {idx} is not a 7/8 block of its (flipped) source"
            flipped += int(matches[0][0])
            total += 1
    # p 0.5 over the sub-volumes of four seeds: some are flipped and some are not (a flip that never or always
    # happens fails here)
    assert 0 < flipped < total, (flipped, total)


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
        # no other augmentation (Taleb's rotation task has none): undoing the rotation gives the crop back exactly
        torch.testing.assert_close(task.table[lab].invert(views["image"][i]), crops[i], rtol=0, atol=0)


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
        task.make_views(torch.zeros(1, 1, 64, 64, 32), torch.Generator().manual_seed(0))


def test_cutout_donors_come_from_the_same_view_batch_never_the_partner_view():
    """Tang's aug_rand runs on each view's batch (main.py:44-45): a donor is another crop of the same view."""
    from nnssl.views import cutout

    b = 4
    rows = 2 * b  # two view groups of four crops; row i has values in [10 i, 10 i + 1)
    x = torch.stack([10.0 * i + torch.rand(1, 32, 32, 32, generator=torch.Generator().manual_seed(i))
                     for i in range(rows)])
    donors = set()
    for seed in range(12):
        out, mask = cutout(x, torch.Generator().manual_seed(seed), groups=2)
        for i in range(rows):
            sources = set(torch.div(out[i][mask[i].expand_as(out[i])], 10, rounding_mode="floor").long().tolist())
            donors |= {(i, j) for j in sources if j != i}
    assert donors, "no box was copied from a donor"
    for i, j in donors:
        assert j // b == i // b, f"row {i} received voxels of row {j} from the other view batch"
        assert j != (i + b) % rows
    with pytest.raises(ValueError, match="equal groups"):
        cutout(x[:7], groups=2)
