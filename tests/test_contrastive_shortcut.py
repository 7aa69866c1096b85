"""A shortcut probe for the contrastive views: can intensity statistics alone find an anchor's positive?

On phantom CT (nnU-Net-style z-scored, 48^3 crops), each view is summarised by its mean, standard deviation and five
percentiles; the probe calls the nearest other view (standardised statistics, Euclidean) the positive. A task whose
positive can be found this way is partly solvable without anatomy. At the recommended global batch of SimCLR and
MoCo v3 (16 crops, 31 candidates per anchor) their views must keep the probe below three times chance, while the weak
photometric jitter these methods used before (scale/shift +-0.1, noise 0.05) lets it find the positive about seven
times as often as chance (22 % against 3 %). Smaller crops make the shortcut stronger (at 32^3 even the papers'
recipes let the probe reach 12-19 %): the method pages recommend 96^3.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from nnssl.data.phantoms import render_case
from nnssl.tasks.mocov3 import RECOMMENDED_BATCH as MOCO_BATCH
from nnssl.tasks.simclr import RECOMMENDED_BATCH as SIMCLR_BATCH
from nnssl.views import MOCO_PHOTOMETRIC, SIMCLR_PHOTOMETRIC, Photometric, two_views

CROP, TRIALS = 48, 8
#: The views' photometric jitter before the recipes of the papers: contrast and brightness +-0.1, noise 0.05.
WEAK = Photometric(p_jitter=1.0, brightness=0.1, contrast=0.1, gamma=0.0, noise_std=0.05)
#: "Much above chance": the bound the probe's success rate must stay under, as a multiple of chance.
BOUND = 3.0


@pytest.fixture(scope="module")
def volumes() -> list[np.ndarray]:
    out = []
    for case in range(8):
        img, _, _ = render_case(900, case, seed=0, size=(64, 96, 96))
        x = np.clip(img.astype(np.float32), -1000, 1000)
        body = x[x > -500]
        out.append((x - body.mean()) / body.std())
    return out


def _crops(volumes: list[np.ndarray], batch: int, rng: np.random.Generator) -> torch.Tensor:
    crops = []
    for _ in range(batch):
        v = volumes[int(rng.integers(len(volumes)))]
        s = [int(rng.integers(0, d - CROP + 1)) for d in v.shape]
        crops.append(v[s[0]:s[0] + CROP, s[1]:s[1] + CROP, s[2]:s[2] + CROP])
    return torch.from_numpy(np.stack(crops))[:, None]


def _statistics(views: torch.Tensor) -> torch.Tensor:
    flat = views.flatten(1)
    q = torch.quantile(flat, torch.tensor([0.05, 0.25, 0.5, 0.75, 0.95]), dim=1).t()
    return torch.cat([flat.mean(1, keepdim=True), flat.std(1, keepdim=True), q], dim=1)


def probe_success(volumes, recipe, batch: int, trials: int = TRIALS) -> float:
    """Fraction of anchors whose nearest view by intensity statistics is their positive."""
    rng, hits, total = np.random.default_rng(0), 0, 0
    for trial in range(trials):
        v = two_views(_crops(volumes, batch, rng), torch.Generator().manual_seed(trial), (0.25, 1.0), recipe)
        s = torch.cat([_statistics(v["view1"]), _statistics(v["view2"])])
        s = (s - s.mean(0)) / s.std(0).clamp_min(1e-6)
        d = torch.cdist(s, s)
        d.fill_diagonal_(float("inf"))
        positive = torch.cat([torch.arange(batch) + batch, torch.arange(batch)])
        hits += int((d.argmin(1) == positive).sum())
        total += 2 * batch
    return hits / total


@pytest.mark.parametrize("name, recipe, batch", [("simclr", (SIMCLR_PHOTOMETRIC,) * 2, SIMCLR_BATCH),
                                                 ("mocov3", MOCO_PHOTOMETRIC, MOCO_BATCH)])
def test_intensity_statistics_do_not_find_the_positive_at_the_recommended_batch(volumes, name, recipe, batch):
    chance = 1.0 / (2 * batch - 1)
    success = probe_success(volumes, recipe, batch)
    assert success <= BOUND * chance, f"{name}: the probe finds the positive {success:.1%} (chance {chance:.1%})"


def test_the_probe_finds_the_shortcut_of_weak_jitter(volumes):
    """The probe has power: with the weak jitter the same statistics find the positive well above the bound."""
    batch = SIMCLR_BATCH
    assert probe_success(volumes, (WEAK, WEAK), batch) > BOUND / (2 * batch - 1)
