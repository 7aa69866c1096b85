"""SimMIM and SMIT tasks: masked-only losses, native-resolution SMIT views, teacher without gradient, EMA,
schedules, centres, loss falls.

Tiny encoder preset, 32^3 crops (SMIT: 32^3 views of a 64^3 region), batch 2, small heads.
"""
from __future__ import annotations

import copy
import math

import pytest
import torch

from nnssl.decoders import LightDecoder, pixel_shuffle_3d
from nnssl.encoders.swin import EncoderConfig, SwinEncoder
from nnssl.losses.reconstruction import masked_l1, masked_l2
from nnssl.masking import upsample_mask
from nnssl.tasks import get_task_class
from nnssl.tasks.simmim import SimMIM, SimMIMConfig
from nnssl.tasks.smit import SMIT, SMITConfig

torch.set_num_threads(1)
SMALL_HEADS = dict(out_dim=32, patch_out_dim=32, head_hidden_dim=32, head_bottleneck_dim=16, view_size=32)


def _crops(seed: int = 0, size: int = 32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    # smooth-ish phantom: blobs + noise, so reconstruction is learnable
    x = torch.nn.functional.avg_pool3d(torch.randn(2, 1, size, size, size, generator=g), 5, 1, 2)
    return x / x.std()


def _region(seed: int = 0) -> torch.Tensor:
    """SMIT's input: the region (64^3 here, 128^3 in the paper) its two views are cut from."""
    return _crops(seed, 64)


def _simmim() -> SimMIM:
    torch.manual_seed(0)
    task = SimMIM(SwinEncoder(EncoderConfig.preset("tiny")), SimMIMConfig())
    task.setup(10)
    return task


def _smit(total_steps: int = 10, **overrides) -> SMIT:
    torch.manual_seed(0)
    task = SMIT(SwinEncoder(EncoderConfig.preset("tiny")), SMITConfig(**{**SMALL_HEADS, **overrides}))
    task.setup(total_steps)
    task.train()
    return task


def _optimizer(task):
    return torch.optim.AdamW([p for p in task.parameters() if p.requires_grad], lr=1e-3)


def test_registry_resolves_both():
    assert get_task_class("simmim") is SimMIM and get_task_class("smit") is SMIT
    assert (SimMIMConfig().mask_ratio, SimMIMConfig().mask_cube_voxels) == (0.6, 16)
    c = SMITConfig()
    assert (c.mask_ratio, c.mask_cube_voxels, c.recon_weight, c.patch_weight, c.global_weight) == (0.7, 16, 1, .1, .1)
    assert SimMIM.uses_mask_token and SMIT.uses_mask_token


def test_masked_reconstruction_loss_by_hand_and_empty_mask():
    pred = torch.zeros(1, 2, 2, 2, 2)
    target = torch.arange(16, dtype=torch.float32).view(1, 2, 2, 2, 2)
    mask = torch.zeros(1, 2, 2, 2, dtype=torch.bool)
    mask[0, 0, 0, 1] = True  # voxel index 1 -> values 1 (channel 0) and 9 (channel 1)
    assert masked_l1(pred, target, mask).item() == pytest.approx((1 + 9) / 2)
    assert masked_l2(pred, target, mask).item() == pytest.approx((1 + 81) / 2)
    with pytest.raises(ValueError, match="hides no voxel"):
        masked_l1(pred, target, torch.zeros_like(mask))
    with pytest.raises(ValueError, match="does not fit"):
        masked_l1(pred, target, torch.ones(1, 3, 3, 3, dtype=torch.bool))


def test_light_decoder_and_pixel_shuffle():
    x = torch.arange(8, dtype=torch.float32).view(1, 8, 1, 1, 1)
    y = pixel_shuffle_3d(x, 2)
    assert y.shape == (1, 1, 2, 2, 2)
    assert torch.equal(y.flatten(), torch.arange(8, dtype=torch.float32))  # channel (i*2+j)*2+k -> voxel (i, j, k)
    dec = LightDecoder(192, 1, stride=32)
    assert dec(torch.randn(2, 192, 1, 1, 1)).shape == (2, 1, 32, 32, 32)


def test_simmim_views_and_loss_ignores_unmasked_voxels():
    task = _simmim()
    views = task.make_views(_crops(), torch.Generator().manual_seed(0))
    assert views["image"].shape == (2, 1, 32, 32, 32)
    assert views["mask"].shape == (2, 16, 16, 16)
    # 16^3-voxel cubes on a 32^3 crop: 8 cells, round(0.6 * 8) = 5 hidden
    assert views["mask"].float().mean(dim=(1, 2, 3)).tolist() == pytest.approx([5 / 8, 5 / 8])
    image, mask = views["image"], views["mask"]
    with torch.no_grad():
        pred = task.predict(image, mask)
    voxel_mask = upsample_mask(mask, 2).bool()
    base = task.loss(pred, image, mask).item()
    noisy_visible = torch.where(voxel_mask, pred, pred + 5 * torch.randn_like(pred))
    assert task.loss(noisy_visible, image, mask).item() == pytest.approx(base, rel=1e-6)
    noisy_hidden = torch.where(voxel_mask, pred + 5 * torch.randn_like(pred), pred)
    assert abs(task.loss(noisy_hidden, image, mask).item() - base) > 1e-2


def test_simmim_loss_falls_on_fixed_data():
    task = _simmim()
    task.train()
    views = task.make_views(_crops(), torch.Generator().manual_seed(0))
    opt = _optimizer(task)
    losses = []
    for step in range(8):
        out = task(views, step)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        task.on_step_end(step)
        losses.append(out["loss"].item())
    assert sum(losses[-2:]) / 2 < 0.9 * sum(losses[:2]) / 2, losses


def test_smit_teacher_gets_no_gradient_and_is_unchanged_by_optimiser():
    task = _smit()
    views = task.make_views(_region(), torch.Generator().manual_seed(0))
    teacher = {k: v.clone() for k, v in task.teacher["encoder"].state_dict().items()}
    teacher_heads = {k: v.clone() for k, v in task.teacher["heads"].state_dict().items()}
    opt = _optimizer(task)
    out = task(views, 0)
    out["loss"].backward()
    teacher_params = list(task.teacher.parameters())
    assert all(p.grad is None and not p.requires_grad for p in teacher_params)
    assert all(id(p) not in {id(q) for g in opt.param_groups for q in g["params"]} for p in teacher_params)
    student_before = task.student.swinViT.patch_embed.proj.weight.clone()
    opt.step()
    assert not torch.equal(student_before, task.student.swinViT.patch_embed.proj.weight)
    for k, v in task.teacher["encoder"].state_dict().items():
        assert torch.equal(v, teacher[k]), k
    for k, v in task.teacher["heads"].state_dict().items():
        assert torch.equal(v, teacher_heads[k]), k
    # teacher stays in eval mode whatever the loop does
    task.train()
    assert not task.teacher["encoder"].training and not task.teacher["heads"].training and task.student.training


def test_smit_ema_update_equals_formula():
    total = 10
    task = _smit(total)
    with torch.no_grad():
        for p in task.student.parameters():
            p.add_(0.1 * torch.randn_like(p))
        for p in task.heads.parameters():
            p.add_(0.1 * torch.randn_like(p))
    step = 3
    m = 1.0 - (1.0 - 0.996) * (math.cos(math.pi * step / (total - 1)) + 1.0) / 2.0
    t_before = {k: v.clone() for k, v in task.teacher["encoder"].named_parameters()}
    s_now = dict(task.student.named_parameters())
    h_before = {k: v.clone() for k, v in task.teacher["heads"].named_parameters()}
    hs_now = dict(task.heads.named_parameters())
    task.on_step_end(step)
    for k, v in task.teacher["encoder"].named_parameters():
        torch.testing.assert_close(v, m * t_before[k] + (1 - m) * s_now[k], rtol=1e-6, atol=1e-7)
    for k, v in task.teacher["heads"].named_parameters():
        torch.testing.assert_close(v, m * h_before[k] + (1 - m) * hs_now[k], rtol=1e-6, atol=1e-7)
    assert task.teacher.momentum(step) == pytest.approx(m)


def test_smit_schedules_index_by_global_step():
    total = 200
    task = _smit(total)  # warm-up 0.06 * 200 = 12 steps; patch delay 12 steps
    assert task.schedule.teacher_temp(0) == pytest.approx(0.04)
    assert task.schedule.teacher_temp(11) == pytest.approx(0.07)
    assert task.schedule.teacher_temp(5) == pytest.approx(0.04 + 0.03 * 5 / 11)
    assert task.schedule.teacher_temp(150) == pytest.approx(0.07)
    assert task.schedule.patch_temp(11) == pytest.approx(0.04)  # held during the delay (pred_start_epoch)
    assert task.schedule.patch_temp(12 + 11) == pytest.approx(0.07)
    assert task.teacher.momentum(0) == pytest.approx(0.996)
    assert task.teacher.momentum(total - 1) == pytest.approx(1.0)
    # one cosine over the whole run (not restarted per epoch): at the middle it is halfway
    assert task.teacher.momentum(100) == pytest.approx(1 - 0.004 * (math.cos(math.pi * 100 / 199) + 1) / 2)
    assert task.teacher.momentum(100) > task.teacher.momentum(50) > task.teacher.momentum(0)


def test_smit_requires_setup():
    torch.manual_seed(0)
    task = SMIT(SwinEncoder(EncoderConfig.preset("tiny")), SMITConfig(**SMALL_HEADS))
    views = task.make_views(_region(), torch.Generator().manual_seed(0))
    with pytest.raises(RuntimeError, match="setup"):
        task(views, 0)


def test_smit_patch_distillation_uses_masked_tokens_only_and_centres_update():
    task = _smit()
    views = task.make_views(_region(), torch.Generator().manual_seed(0))
    x, masks = views["views"], views["masks"]
    assert x.shape == (4, 1, 32, 32, 32) and masks.shape == (4, 16, 16, 16)
    token_mask = task.token_mask(masks)
    assert token_mask.shape == (4, 8)  # stride-16 tokens of a 32^3 crop: 2^3
    # 16^3-voxel cubes coincide with stride-16 tokens: the token mask is the cube mask
    assert torch.equal(token_mask, masks[:, ::8, ::8, ::8].flatten(1))
    assert bool(token_mask.any()) and bool((~token_mask).any())

    centres = copy.deepcopy({"g": task.global_loss.state_dict(), "p": task.patch_loss.state_dict()})
    base = task(views, 0)
    with torch.no_grad():
        t_global, t_patch = task._logits(task.teacher["encoder"](x), task.teacher["heads"])
    # centres moved by the formula c = 0.9 * 0 + 0.1 * mean(teacher logits)
    torch.testing.assert_close(task.global_loss.center, 0.1 * t_global.mean(0, keepdim=True), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(task.patch_loss.center, 0.1 * t_patch.mean(dim=(0, 1))[None, None], rtol=1e-5,
                               atol=1e-7)
    assert task.global_loss.center.abs().sum() > 0

    def perturb(where: torch.Tensor):
        def hook(module, args, out):
            return out + 50.0 * torch.randn_like(out) * where[..., None]
        return hook

    for where, should_change in ((~token_mask, False), (token_mask, True)):
        task.global_loss.load_state_dict(centres["g"])
        task.patch_loss.load_state_dict(centres["p"])
        handle = task.heads["patch"].register_forward_hook(perturb(where.float()))
        try:
            out = task(views, 0)
        finally:
            handle.remove()
        changed = abs(out["loss/patch"].item() - base["loss/patch"].item()) > 1e-4
        assert changed == should_change
        assert out["loss/recon"].item() == pytest.approx(base["loss/recon"].item(), rel=1e-5)
    # buffers (centres) and the teacher are part of the checkpointed state
    state = task.state_dict()
    assert "global_loss.center" in state and "patch_loss.center" in state
    assert any(k.startswith("teacher.copies.encoder.swinViT.") for k in state)


def test_smit_loss_falls_on_fixed_data():
    task = _smit(12)
    views = task.make_views(_region(), torch.Generator().manual_seed(0))
    opt = _optimizer(task)
    losses = []
    for step in range(10):
        out = task(views, step)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        task.on_step_end(step)
        losses.append(out["loss"].item())
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-2:]) / 2 < 0.9 * sum(losses[:2]) / 2, losses


def test_smit_config_rejects_bad_values():
    with pytest.raises(ValueError, match="shared_head"):
        SMITConfig(shared_head=True, out_dim=8, patch_out_dim=16)
    with pytest.raises(ValueError, match="mask_ratio"):
        SMITConfig(mask_ratio=1.0)


def test_smit_views_are_native_crops_of_the_region():
    """SMIT cuts its two 96^3 views from a 128^3 region without interpolation: each view is a slice of the region."""
    task = _smit()
    region = _region(3)
    views = task.make_views(region, torch.Generator().manual_seed(4))["views"]
    assert views.shape == (4, 1, 32, 32, 32)
    for i in range(views.shape[0]):
        crop = region[i % 2, 0]
        hits = [(a, b, c) for a in range(33) for b in range(33) for c in range(33)
                if torch.equal(crop[a:a + 32, b:b + 32, c:c + 32], views[i, 0])]
        assert len(hits) == 1, f"view {i} is not a native sub-volume of its region"
    assert SMITConfig().view_size == 96


def test_smit_refuses_a_region_smaller_than_its_views():
    wide = SMIT(SwinEncoder(EncoderConfig.preset("tiny")), SMITConfig(**{**SMALL_HEADS, "view_size": 64}))
    with pytest.raises(ValueError, match="crop of at least 64"):
        SMIT.check_crop((32, 64, 64), wide.cfg)
    assert any("same sub-volume" in w for w in SMIT.check_crop((32, 32, 32), _smit().cfg))
