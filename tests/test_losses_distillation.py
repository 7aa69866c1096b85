"""DINO and iBOT losses against naive re-derivations of the papers' equations (python loops, float64)."""
from __future__ import annotations

import math

import pytest
import torch

from nnssl.losses.dino import DINOLoss
from nnssl.losses.ibot import PatchDistillationLoss


def _naive_softmax(values: list[float]) -> list[float]:
    top = max(values)
    exps = [math.exp(v - top) for v in values]
    total = sum(exps)
    return [e / total for e in exps]


def _naive_log_softmax(values: list[float]) -> list[float]:
    top = max(values)
    log_total = top + math.log(sum(math.exp(v - top) for v in values))
    return [v - log_total for v in values]


def naive_dino_loss(student: list[torch.Tensor], teacher: list[torch.Tensor], center: list[float], t_temp: float,
                    s_temp: float) -> float:
    """Caron et al. 2021, eq. 1 with centering: mean over pairs (t != s) of mean_b H(P_t(b), P_s(b))."""
    pair_losses = []
    for ti, t_view in enumerate(teacher):
        for si, s_view in enumerate(student):
            if ti == si:
                continue
            per_sample = []
            for b in range(t_view.shape[0]):
                t_row = [float(v) for v in t_view[b].double()]
                s_row = [float(v) for v in s_view[b].double()]
                p_t = _naive_softmax([(t_row[k] - center[k]) / t_temp for k in range(len(t_row))])
                log_p_s = _naive_log_softmax([v / s_temp for v in s_row])
                per_sample.append(-sum(p * lp for p, lp in zip(p_t, log_p_s)))
            pair_losses.append(sum(per_sample) / len(per_sample))
    return sum(pair_losses) / len(pair_losses)


def test_dino_loss_matches_naive_equation_with_centre_and_local_views():
    torch.manual_seed(0)
    k, b = 7, 3
    loss_fn = DINOLoss(k, student_temp=0.1, center_momentum=0.9)
    loss_fn.center.copy_(torch.randn(1, k))  # a non-zero centre so that centering is exercised
    center = [float(v) for v in loss_fn.center[0].double()]
    teacher = [torch.randn(b, k) * 3 for _ in range(2)]
    student = [torch.randn(b, k) * 3 for _ in range(4)]  # 2 global + 2 local views
    value = loss_fn(student, teacher, teacher_temp=0.05, update_center=False)
    expected = naive_dino_loss(student, teacher, center, 0.05, 0.1)
    assert value.item() == pytest.approx(expected, rel=1e-5)


def test_dino_loss_skips_same_view_pairs():
    # With identical student and teacher views the loss is not the same as when same-view pairs were included.
    torch.manual_seed(1)
    k, b = 5, 2
    loss_fn = DINOLoss(k)
    views = [torch.randn(b, k) for _ in range(2)]
    value = loss_fn(views, views, teacher_temp=0.04, update_center=False).item()
    # 2 teacher views x 2 student views - 2 same-view pairs = 2 pairs
    assert value == pytest.approx(naive_dino_loss(views, views, [0.0] * k, 0.04, 0.1), rel=1e-5)


def test_dino_centre_momentum_update_equals_formula():
    torch.manual_seed(2)
    k, b, m = 6, 4, 0.9
    loss_fn = DINOLoss(k, center_momentum=m)
    old = torch.randn(1, k)
    loss_fn.center.copy_(old)
    teacher = [torch.randn(b, k) for _ in range(2)]
    loss_fn([torch.randn(b, k) for _ in range(2)], teacher, teacher_temp=0.04)
    for j in range(k):
        mean_j = sum(float(t[i, j]) for t in teacher for i in range(b)) / (2 * b)
        assert float(loss_fn.center[0, j]) == pytest.approx(m * float(old[0, j]) + (1 - m) * mean_j, rel=1e-5,
                                                            abs=1e-6)
    assert "center" in loss_fn.state_dict()  # checkpointed with the task


def test_dino_loss_gives_no_gradient_to_teacher():
    k, b = 4, 2
    teacher = [torch.randn(b, k, requires_grad=True) for _ in range(2)]
    student = [torch.randn(b, k, requires_grad=True) for _ in range(2)]
    DINOLoss(k)(student, teacher, teacher_temp=0.04).backward()
    assert all(t.grad is None for t in teacher)
    assert all(s.grad is not None and s.grad.abs().sum() > 0 for s in student)


@pytest.mark.parametrize("bad", ["shape", "temp", "single"])
def test_dino_loss_rejects_bad_input(bad):
    loss_fn = DINOLoss(4)
    views = [torch.randn(2, 4), torch.randn(2, 4)]
    with pytest.raises(ValueError):
        if bad == "shape":
            loss_fn([torch.randn(2, 5)] * 2, views, 0.04)
        elif bad == "temp":
            loss_fn(views, views, 0.0)
        else:
            loss_fn(views[:1], views[:1], 0.04)


def _patch_setup(seed: int = 3):
    torch.manual_seed(seed)
    b, n, k = 2, 8, 5
    student = [torch.randn(b, n, k) * 2 for _ in range(2)]
    teacher = [torch.randn(b, n, k) * 2 for _ in range(2)]
    masks = [torch.rand(b, n) < 0.4 for _ in range(2)]
    for m in masks:
        m[:, 0] = True   # at least one hidden and one visible token per sample
        m[:, 1] = False
    return student, teacher, masks, k


def test_ibot_patch_loss_matches_naive_masked_mean():
    student, teacher, masks, k = _patch_setup()
    loss_fn = PatchDistillationLoss(k, student_temp=0.1)
    loss_fn.center.copy_(torch.randn(1, 1, k))
    center = [float(v) for v in loss_fn.center[0, 0].double()]
    value = loss_fn(student, teacher, masks, teacher_temp=0.06, update_center=False).item()
    view_losses = []
    for s, t, m in zip(student, teacher, masks):
        sample_losses = []
        for b in range(s.shape[0]):
            hidden = [i for i in range(s.shape[1]) if bool(m[b, i])]
            token_losses = []
            for i in hidden:
                p_t = _naive_softmax([(float(t[b, i, j]) - center[j]) / 0.06 for j in range(k)])
                lp = _naive_log_softmax([float(s[b, i, j]) / 0.1 for j in range(k)])
                token_losses.append(-sum(p * q for p, q in zip(p_t, lp)))
            sample_losses.append(sum(token_losses) / len(token_losses))
        view_losses.append(sum(sample_losses) / len(sample_losses))
    assert value == pytest.approx(sum(view_losses) / len(view_losses), rel=1e-5)


def test_ibot_patch_loss_uses_masked_tokens_only():
    student, teacher, masks, k = _patch_setup(4)
    loss_fn = PatchDistillationLoss(k)
    base = loss_fn(student, teacher, masks, 0.04, update_center=False)
    # Change the student's outputs at visible tokens only: the loss must not move.
    changed = [s + 10.0 * torch.randn_like(s) * (~m)[..., None] for s, m in zip(student, masks)]
    assert loss_fn(changed, teacher, masks, 0.04, update_center=False).item() == pytest.approx(base.item(), rel=1e-6)
    # ... while changing hidden tokens does move it (the test could fail).
    changed_hidden = [s + 10.0 * torch.randn_like(s) * m[..., None] for s, m in zip(student, masks)]
    assert abs(loss_fn(changed_hidden, teacher, masks, 0.04, update_center=False).item() - base.item()) > 1e-3
    # and the gradient at visible tokens is exactly zero.
    grads = [s.clone().requires_grad_(True) for s in student]
    loss_fn(grads, teacher, masks, 0.04, update_center=False).backward()
    for g, m in zip(grads, masks):
        assert torch.all(g.grad[~m] == 0)
        assert g.grad[m].abs().sum() > 0


def test_ibot_patch_centre_update_equals_formula():
    student, teacher, masks, k = _patch_setup(5)
    m = 0.9
    loss_fn = PatchDistillationLoss(k, center_momentum=m)
    loss_fn(student, teacher, masks, 0.04)
    allt = torch.cat(teacher).double()  # (V*B, N, K)
    for j in range(k):
        mean_j = sum(float(allt[i, n, j]) for i in range(allt.shape[0]) for n in range(allt.shape[1])) / (
            allt.shape[0] * allt.shape[1])
        assert float(loss_fn.center[0, 0, j]) == pytest.approx((1 - m) * mean_j, rel=1e-5, abs=1e-6)


def test_ibot_patch_loss_rejects_mismatched_mask():
    student, teacher, masks, k = _patch_setup()
    with pytest.raises(ValueError, match="token mask"):
        PatchDistillationLoss(k)(student, teacher, [m[:, :3] for m in masks], 0.04)
