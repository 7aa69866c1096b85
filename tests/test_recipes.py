"""OptimRecipe.resolve: the linear scaling rule, warm-up from the fraction, explicit values over the recipe, and
what nnssl_pretrain --show-config prints from it."""
from __future__ import annotations

import pytest

from nnssl.recipes import OptimRecipe


def test_linear_scaling_warmup_and_explicit_values():
    recipe = OptimRecipe(base_lr=1.5e-4, reference_batch=256, min_lr=1e-6, warmup_fraction=0.1, weight_decay=0.04,
                         weight_decay_end=0.4, clip_grad=3.0, clip_mode="per-parameter", betas=(0.9, 0.95))
    r = recipe.resolve(global_batch=8, total_steps=1000)
    assert r.lr == pytest.approx(1.5e-4 * 8 / 256) and r.min_lr == 1e-6  # min_lr is not scaled unless asked
    assert r.warmup_steps == 100 and (r.weight_decay, r.weight_decay_end) == (0.04, 0.4)
    assert (r.clip_grad, r.clip_mode, r.betas) == (3.0, "per-parameter", (0.9, 0.95))
    assert set(r.sources.values()) == {"method default"}
    e = recipe.resolve(global_batch=8, total_steps=1000, lr=1e-3, warmup_steps=7, weight_decay=None)
    assert (e.lr, e.warmup_steps, e.weight_decay) == (1e-3, 7, 0.04)
    assert e.sources["lr"] == e.sources["warmup_steps"] == "set explicitly"
    assert e.sources["weight_decay"] == "method default"  # None means "not given", never zero
    with pytest.raises(ValueError, match="unknown optimisation setting"):
        recipe.resolve(8, 1000, momentum=0.9)


def test_scaled_min_lr_constant_schedule_and_no_reference_batch():
    scaled = OptimRecipe(base_lr=1e-3, reference_batch=1024, min_lr=1e-5, scale_min_lr=True)
    assert scaled.resolve(512, 10).min_lr == pytest.approx(5e-6)
    constant = OptimRecipe(base_lr=1e-4, reference_batch=None, schedule="constant")
    r = constant.resolve(2, 10)
    assert r.lr == 1e-4 and r.min_lr == 1e-4  # no scaling without a reference batch; constant ends where it starts
    for bad in ({"base_lr": 0}, {"base_lr": 1e-4, "warmup_fraction": 1.0}, {"base_lr": 1e-4, "schedule": "step"},
                {"base_lr": 1e-4, "betas": (0.9, 1.0)}):
        with pytest.raises(ValueError):
            OptimRecipe(**bad)


def test_show_config_prints_the_resolved_settings_and_their_sources(capsys):
    from nnssl.cli.pretrain import main
    from nnssl.tasks import get_task_class

    assert main(["-m", "dino", "--encoder", "tiny", "--batch-size", "4", "--steps", "100", "--device", "cpu",
                 "--show-config"]) == 0
    out = capsys.readouterr().out
    expected = get_task_class("dino").recipe.resolve(4, 100)
    assert f"{expected.lr!s}" in out and "(method default)" in out
    assert main(["-m", "dino", "--encoder", "tiny", "--batch-size", "4", "--steps", "100", "--device", "cpu",
                 "--lr", "0.002", "--show-config"]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.strip().startswith("lr "))
    assert "0.002" in line and "set explicitly" in line
