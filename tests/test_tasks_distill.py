"""DINO and iBOT tasks: multi-crop shapes, teacher without gradient, EMA, schedules, masked patch loss on the final
stage, loss falls.

Tiny encoder preset, 32^3 crops (64^3 where local crops must be smaller or iBOT needs tokens to mask), batch 2,
small heads.
"""
from __future__ import annotations

import copy
import math

import pytest
import torch

from nnssl.encoders.swin import EncoderConfig, SwinEncoder
from nnssl.tasks import get_task_class
from nnssl.tasks.dino import DINO, DINOConfig
from nnssl.views import local_crop_size
from nnssl.tasks.ibot import IBOT, IBOTConfig

torch.set_num_threads(1)
SMALL = dict(out_dim=32, head_hidden_dim=32, head_bottleneck_dim=16, local_crops_number=2)


def _crops(size: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    # a 64^3 request becomes 64 x 32 x 32: long enough along one axis for a smaller local crop, half the cost
    shape = (size, 32, 32)
    x = torch.nn.functional.avg_pool3d(torch.randn(2, 1, *shape, generator=g), 5, 1, 2)
    return x / x.std()


def _cube(size: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.avg_pool3d(torch.randn(2, 1, size, size, size, generator=g), 5, 1, 2)
    return x / x.std()


def _dino(total: int = 10, **overrides) -> DINO:
    torch.manual_seed(0)
    task = DINO(SwinEncoder(EncoderConfig.preset("tiny")), DINOConfig(**{**SMALL, **overrides}))
    task.setup(total)
    task.train()
    return task


def _ibot(total: int = 10, **overrides) -> IBOT:
    torch.manual_seed(0)
    cfg = IBOTConfig(**{**SMALL, "patch_out_dim": 32, "masked_image_prob": 1.0, "pred_start_fraction": 0.0,
                        **overrides})
    task = IBOT(SwinEncoder(EncoderConfig.preset("tiny")), cfg)
    task.setup(total)
    task.train()
    return task


BUILDERS = {"dino": _dino, "ibot": _ibot}


def test_registry_and_metadata():
    assert get_task_class("dino") is DINO and get_task_class("ibot") is IBOT
    assert IBOT.uses_mask_token and not DINO.uses_mask_token
    assert DINOConfig().out_dim == 65536 and IBOTConfig().out_dim == 8192  # paper defaults kept
    from nnssl.training.loop import PretrainConfig, build_task

    cfg = PretrainConfig(method="dino", datasets=["1"], encoder="tiny", crop=(32, 32, 32), device="cpu",
                         task_options={k: str(v) for k, v in SMALL.items()})
    assert not build_task(cfg, 1).student.mask_token.requires_grad  # DINO never masks: no gradient DDP would wait for


@pytest.mark.parametrize("crop,expected", [(32, 32), (64, 32), (96, 32), (128, 64), (192, 96)])
def test_local_crop_size_stays_swin_compatible(crop, expected):
    assert local_crop_size((crop, crop, crop), 0.5) == (expected,) * 3


@pytest.mark.parametrize("name", ["dino", "ibot"])
def test_multicrop_view_shapes(name):
    task = BUILDERS[name]()
    views = task.make_views(_crops(64), torch.Generator().manual_seed(0))
    assert views["global"].shape == (4, 1, 64, 32, 32)  # 2 global crops x batch 2, full crop size
    assert views["local"].shape == (4, 1, 32, 32, 32)  # 2 local crops x batch 2, half size (min 32)
    if name == "ibot":
        # the final-stage token grid (stride 32), as iBOT's Swin distils its last stage
        assert views["masks"].shape == (4, 2, 1, 1) and views["masks"].dtype == torch.bool
    out = task(views, 0)
    assert torch.isfinite(out["loss"])
    no_local = BUILDERS[name](local_crops_number=0).make_views(_crops(32), torch.Generator().manual_seed(0))
    assert "local" not in no_local and no_local["global"].shape == (4, 1, 32, 32, 32)


@pytest.mark.parametrize("name", ["dino", "ibot"])
def test_teacher_gets_no_gradient_and_stays_in_eval(name):
    task = BUILDERS[name]()
    views = task.make_views(_crops(), torch.Generator().manual_seed(0))
    before = {k: v.clone() for k, v in task.teacher["encoder"].state_dict().items()}
    opt = torch.optim.AdamW([p for p in task.parameters() if p.requires_grad], lr=1e-3)
    task(views, 0)["loss"].backward()
    teacher_params = list(task.teacher.parameters())
    assert all(p.grad is None and not p.requires_grad for p in teacher_params)
    assert any(p.grad is not None for p in task.student.parameters())
    opt.step()
    for k, v in task.teacher["encoder"].state_dict().items():
        assert torch.equal(v, before[k]), k
    task.train()
    assert not task.teacher["encoder"].training and not task.teacher["heads"].training and task.heads.training


@pytest.mark.parametrize("name", ["dino", "ibot"])
def test_ema_update_equals_formula(name):
    total, step = 20, 7
    task = BUILDERS[name](total)
    with torch.no_grad():
        for p in list(task.student.parameters()) + list(task.heads.parameters()):
            p.add_(0.1 * torch.randn_like(p))
    m = 1.0 - 0.004 * (math.cos(math.pi * step / (total - 1)) + 1.0) / 2.0
    pairs = [(task.teacher["encoder"], task.student), (task.teacher["heads"], task.heads)]
    before = [({k: v.clone() for k, v in t.named_parameters()}, dict(s.named_parameters())) for t, s in pairs]
    task.on_step_end(step)
    for (t, _), (t_old, s_now) in zip(pairs, before):
        for k, v in t.named_parameters():
            torch.testing.assert_close(v, m * t_old[k] + (1 - m) * s_now[k], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", ["dino", "ibot"])
def test_teacher_temperature_schedule(name):
    # warm-up 0.3 * 100 = 30 steps from 0.04 to 0.07
    task = BUILDERS[name](100, teacher_temp=0.07, teacher_temp_warmup_fraction=0.3)
    assert task.schedule.teacher_temp(0) == pytest.approx(0.04)
    assert task.schedule.teacher_temp(29) == pytest.approx(0.07)
    assert task.schedule.teacher_temp(10) == pytest.approx(0.04 + 0.03 * 10 / 29)
    assert task.schedule.teacher_temp(99) == pytest.approx(0.07)
    assert task.teacher.momentum(0) == pytest.approx(0.996) and task.teacher.momentum(99) == pytest.approx(1.0)


def test_reference_defaults_of_the_teacher_temperatures():
    """DINO's code defaults (teacher 0.04, no warm-up) and iBOT's Swin-T command (0.07 after 30 of 300 epochs)."""
    dino, ibot = _dino(300), _ibot(300, teacher_temp_warmup_fraction=0.1)
    assert dino.schedule.teacher_temp(0) == pytest.approx(0.04) == dino.schedule.teacher_temp(299)
    assert ibot.schedule.teacher_temp(0) == pytest.approx(0.04) and ibot.schedule.teacher_temp(30) == pytest.approx(0.07)
    assert IBOTConfig().teacher_temp_warmup_fraction == pytest.approx(30 / 300)


def test_dino_centre_updates_with_teacher_logits():
    task = _dino()
    views = task.make_views(_crops(), torch.Generator().manual_seed(0))
    assert torch.all(task.global_loss.center == 0)
    task(views, 0)
    with torch.no_grad():
        from nnssl.distillation import global_logits, normalized_tokens

        heads = task.teacher["heads"]
        t = global_logits(normalized_tokens(task.teacher["encoder"](views["global"])[-1], heads), heads)
    torch.testing.assert_close(task.global_loss.center, 0.1 * t.mean(0, keepdim=True), rtol=1e-5, atol=1e-7)
    assert "global_loss.center" in task.state_dict()


def test_ibot_patch_loss_uses_masked_tokens_only():
    task = _ibot(local_crops_number=0)
    views = task.make_views(_cube(64), torch.Generator().manual_seed(1))
    masks = views["masks"].flatten(1)  # (4, 8): 2^3 final-stage tokens of a 64^3 crop
    assert masks.any() and (~masks).any()
    state = copy.deepcopy({"g": task.global_loss.state_dict(), "p": task.patch_loss.state_dict()})
    base = task(views, 0)

    def perturb(where: torch.Tensor):
        def hook(module, args, out):
            if out.ndim == 3:  # patch logits only (the shared head also sees global tokens)
                return out + 50.0 * torch.randn_like(out) * where[..., None]
            return out
        return hook

    for where, should_change in ((~masks, False), (masks, True)):
        task.global_loss.load_state_dict(state["g"])
        task.patch_loss.load_state_dict(state["p"])
        handle = task.heads["patch"].register_forward_hook(perturb(where.float()))
        try:
            out = task(views, 0)
        finally:
            handle.remove()
        assert (abs(out["loss/patch"].item() - base["loss/patch"].item()) > 1e-4) == should_change
    assert "patch_loss.center" in task.state_dict()


def test_ibot_unmasked_images_and_shared_head():
    task = _ibot(masked_image_prob=0.0)
    views = task.make_views(_crops(), torch.Generator().manual_seed(0))
    assert not views["masks"].any()
    assert task.heads["patch"] is task.heads["global"]  # shared head by default
    separate = _ibot(shared_head=False)
    assert separate.heads["patch"] is not separate.heads["global"]


@pytest.mark.parametrize("name", ["dino", "ibot"])
def test_loss_falls_on_fixed_data(name):
    # A frozen centre and a constant teacher temperature keep the target (nearly) fixed, so the student must
    # approach it; with DINO's moving centre the cross-entropy tracks the teacher entropy instead.
    extra = dict(center_momentum=1.0, teacher_temp_warmup_fraction=0.0)
    if name == "ibot":
        extra["patch_center_momentum"] = 1.0
    task = BUILDERS[name](10, **extra)
    views = task.make_views(_crops(), torch.Generator().manual_seed(0))
    opt = torch.optim.AdamW([p for p in task.parameters() if p.requires_grad], lr=1e-3)
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


def test_ibot_config_rejects_bad_ratio():
    with pytest.raises(ValueError, match="pred_ratio"):
        IBOTConfig(pred_ratio=0.9, pred_ratio_var=0.2)


def test_ibot_masks_nothing_before_masked_modelling_starts():
    """iBOT's Swin command starts masked modelling at epoch 50 of 300: before that every crop is shown whole."""
    task = _ibot(60, pred_start_fraction=0.5, local_crops_number=0)
    views = task.make_views(_cube(64), torch.Generator().manual_seed(1))
    assert views["masks"].any()
    seen = []
    handle = task.student.swinViT.patch_embed.register_forward_hook(
        lambda m, a, out: seen.append(task.student._pending_mask))
    try:
        task(views, 29)
        task(views, 30)
    finally:
        handle.remove()
    assert len(seen) == 2 and not seen[0].any() and seen[1].any()  # the student's calls at steps 29 and 30
    assert IBOTConfig().pred_start_fraction == pytest.approx(50 / 300)
