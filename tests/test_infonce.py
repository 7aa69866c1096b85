"""NT-Xent / InfoNCE / MoCo v3 losses against naive float64 re-derivations of the papers' equations."""
from __future__ import annotations

import math

import pytest
import torch

from nnssl.losses.infonce import info_nce, nt_xent, symmetric_info_nce


def _cos(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def _naive_nt_xent(z1: torch.Tensor, z2: torch.Tensor, tau: float) -> float:
    """SimCLR eq. (1), literally: l(i, j) = -log exp(s_ij / tau) / sum_{k != i} exp(s_ik / tau), mean over 2N."""
    z = [row.tolist() for row in torch.cat([z1, z2]).double()]
    n = z1.shape[0]
    total = 0.0
    for i in range(2 * n):
        j = i + n if i < n else i - n
        denom = sum(math.exp(_cos(z[i], z[k]) / tau) for k in range(2 * n) if k != i)
        total += -math.log(math.exp(_cos(z[i], z[j]) / tau) / denom)
    return total / (2 * n)


def _naive_info_nce(q: torch.Tensor, k: torch.Tensor, pos: list[int], tau: float, normalize: bool) -> float:
    qs, ks = [r.tolist() for r in q.double()], [r.tolist() for r in k.double()]
    total = 0.0
    for i, qi in enumerate(qs):
        if normalize:
            scores = [_cos(qi, kj) / tau for kj in ks]
        else:
            scores = [sum(a * b for a, b in zip(qi, kj)) / tau for kj in ks]
        total += -scores[pos[i]] + math.log(sum(math.exp(s) for s in scores))
    return total / len(qs)


def test_nt_xent_closed_form_on_orthonormal_pairs():
    # Two samples whose views coincide and are orthogonal to the other sample: for every anchor the positive has
    # cosine 1 and the two negatives cosine 0, so l = -log(e^(1/tau) / (e^(1/tau) + 2)) = log(1 + 2 e^(-1/tau)).
    e = torch.eye(2, dtype=torch.float64)
    tau = 0.5
    expected = math.log(1.0 + 2.0 * math.exp(-1.0 / tau))
    assert nt_xent(e, e.clone(), temperature=tau).item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("tau", [0.5, 0.1])
def test_nt_xent_matches_naive_loop(tau):
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)
    assert nt_xent(z1, z2, temperature=tau).item() == pytest.approx(_naive_nt_xent(z1, z2, tau), rel=1e-5)
    assert nt_xent(z1.double(), z2.double(), temperature=tau).item() == pytest.approx(
        _naive_nt_xent(z1, z2, tau), rel=1e-12)


def test_nt_xent_is_scale_invariant_and_symmetric_in_views():
    g = torch.Generator().manual_seed(1)
    z1, z2 = torch.randn(4, 8, generator=g), torch.randn(4, 8, generator=g)
    base = nt_xent(z1, z2)
    torch.testing.assert_close(nt_xent(3.0 * z1, 0.5 * z2), base)
    torch.testing.assert_close(nt_xent(z2, z1), base)


@pytest.mark.parametrize("normalize", [True, False])
def test_info_nce_matches_naive_loop_with_explicit_positives(normalize):
    g = torch.Generator().manual_seed(2)
    q, k = torch.randn(3, 5, generator=g, dtype=torch.float64), torch.randn(6, 5, generator=g, dtype=torch.float64)
    pos = [4, 0, 2]
    got = info_nce(q, k, torch.tensor(pos), temperature=0.7, normalize=normalize).item()
    assert got == pytest.approx(_naive_info_nce(q, k, pos, 0.7, normalize), rel=1e-12)


def test_info_nce_default_pairs_query_i_with_key_i():
    g = torch.Generator().manual_seed(3)
    q, k = torch.randn(4, 6, generator=g, dtype=torch.float64), torch.randn(4, 6, generator=g, dtype=torch.float64)
    assert info_nce(q, k, temperature=0.2).item() == pytest.approx(
        _naive_info_nce(q, k, [0, 1, 2, 3], 0.2, True), rel=1e-12)


def test_symmetric_moco_loss_matches_naive_and_stops_key_gradients():
    g = torch.Generator().manual_seed(4)
    q1, q2, k1, k2 = (torch.randn(3, 4, generator=g, dtype=torch.float64) for _ in range(4))
    k1.requires_grad_(True)
    k2.requires_grad_(True)
    q1.requires_grad_(True)
    tau = 0.2
    expected = 2 * tau * (_naive_info_nce(q1.detach(), k2.detach(), [0, 1, 2], tau, True)
                          + _naive_info_nce(q2, k1.detach(), [0, 1, 2], tau, True))
    loss = symmetric_info_nce(q1, q2, k1, k2, temperature=tau)
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    loss.backward()
    assert q1.grad is not None and q1.grad.abs().sum() > 0
    assert k1.grad is None and k2.grad is None


def test_perfect_alignment_gives_lower_loss_than_random():
    g = torch.Generator().manual_seed(5)
    z = torch.randn(8, 16, generator=g)
    assert nt_xent(z, z.clone()) < nt_xent(z, torch.randn(8, 16, generator=g))


@pytest.mark.parametrize("call, match", [
    (lambda: nt_xent(torch.randn(1, 4), torch.randn(1, 4)), "at least 2 samples"),
    (lambda: nt_xent(torch.randn(2, 4), torch.randn(3, 4)), "same shape"),
    (lambda: nt_xent(torch.randn(2, 4, 1), torch.randn(2, 4, 1)), r"\(N, D\)"),
    (lambda: nt_xent(torch.randn(2, 4), torch.randn(2, 4), temperature=0.0), "temperature"),
    (lambda: info_nce(torch.randn(1, 4), torch.randn(1, 4)), "at least one negative"),
    (lambda: info_nce(torch.randn(2, 4), torch.randn(2, 5)), "dim"),
    (lambda: info_nce(torch.randn(3, 4), torch.randn(2, 4)), "3 queries but only 2 keys"),
    (lambda: info_nce(torch.randn(2, 4), torch.randn(3, 4), torch.tensor([0, 3])), "positive indices"),
    (lambda: symmetric_info_nce(*(torch.randn(1, 4) for _ in range(4))), "at least one negative"),
])
def test_degenerate_input_raises_clear_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def _distributed_worker(rank: int, world: int, port: int, z1, z2, q, k, out) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        n = z1.shape[0] // world
        sl = slice(rank * n, (rank + 1) * n)
        a, b = z1[sl].clone().requires_grad_(True), z2[sl].clone()
        loss = nt_xent(a, b, temperature=0.5)
        loss.backward()
        out[f"nt_xent{rank}"] = loss.item()
        out[f"grad{rank}"] = a.grad.clone()
        out[f"info_nce{rank}"] = info_nce(q[sl], k[sl], temperature=0.2).item()
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # spawns two processes (~15 s on the shared 2-core machine)
def test_negatives_are_gathered_across_ranks():
    """Two gloo ranks holding half a batch each: the mean of their losses equals the one-process full-batch loss,
    and gradients reach every rank's embeddings as in the full batch."""
    import socket

    import torch.multiprocessing as mp

    g = torch.Generator().manual_seed(6)
    z1, z2 = torch.randn(4, 8, generator=g, dtype=torch.float64), torch.randn(4, 8, generator=g, dtype=torch.float64)
    q, k = torch.randn(4, 8, generator=g, dtype=torch.float64), torch.randn(4, 8, generator=g, dtype=torch.float64)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = mp.Manager().dict()
    mp.spawn(_distributed_worker, args=(2, port, z1, z2, q, k, out), nprocs=2, join=True)
    full = nt_xent(z1, z2, temperature=0.5, gather=False)
    assert (out["nt_xent0"] + out["nt_xent1"]) / 2 == pytest.approx(full.item(), rel=1e-10)
    assert (out["info_nce0"] + out["info_nce1"]) / 2 == pytest.approx(
        info_nce(q, k, temperature=0.2, gather=False).item(), rel=1e-10)
    # The gather keeps the graph: rank r's rows get the gradient of L_0 + L_1 (the other rank's loss included),
    # which DDP's averaging turns into the gradient of the full-batch loss (L_0 + L_1) / 2.
    a = z1.clone().requires_grad_(True)
    nt_xent(a, z2, temperature=0.5, gather=False).backward()
    torch.testing.assert_close(torch.cat([out["grad0"], out["grad1"]]) / 2, a.grad)
