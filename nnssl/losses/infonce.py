"""InfoNCE-family contrastive losses, vectorised and framework-free.

* ``info_nce``: the InfoNCE loss of CPC (van den Oord et al. 2018, https://arxiv.org/abs/1807.03748): each query
  has one positive among a set of keys, every other key is a negative.
* ``nt_xent``: SimCLR's normalized temperature-scaled cross entropy (Chen et al., ICML 2020,
  https://arxiv.org/abs/2002.05709, eq. 1): 2N views, each view's positive is the other view of its sample, the
  2N - 2 other views are negatives.
* ``symmetric_info_nce``: MoCo v3's symmetrised loss (Chen, Xie, He, ICCV 2021, https://arxiv.org/abs/2104.02057,
  Algorithm 1): ctr(q1, k2) + ctr(q2, k1), with ctr scaled by 2 * tau as in the authors' code.

Negatives are all-gathered across ranks only when ``torch.distributed`` is initialised with more than one process
(``gather=True``); on one CPU process nothing distributed is touched.
"""
from __future__ import annotations

import torch
from torch import Tensor
import torch.nn.functional as F


def _world() -> tuple[int, int]:
    """(rank, world size), (0, 1) when torch.distributed is not in use."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def gather_across_ranks(x: Tensor, with_grad: bool) -> Tensor:
    """Concatenate ``x`` (N, D) of every rank along dim 0 -> (world * N, D); ``x`` itself when not distributed.

    ``with_grad`` keeps the graph through the gather (SimCLR: gradients flow into every rank's embeddings);
    keys of a momentum encoder are gathered without it.
    """
    _, world = _world()
    if world == 1:
        return x
    if with_grad:
        import torch.distributed.nn.functional as dist_fn

        return torch.cat(dist_fn.all_gather(x), dim=0)
    parts = [torch.empty_like(x) for _ in range(world)]
    torch.distributed.all_gather(parts, x.detach().contiguous())
    return torch.cat(parts, dim=0)


def _check_temperature(temperature: float) -> None:
    if not temperature > 0.0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


def _check_2d(name: str, x: Tensor) -> None:
    if x.ndim != 2:
        raise ValueError(f"{name} must be (N, D) embeddings, got shape {tuple(x.shape)}; flatten or pool it first")


def info_nce(query: Tensor, keys: Tensor, positives: Tensor | None = None, temperature: float = 0.2,
             normalize: bool = True, gather: bool = True) -> Tensor:
    """InfoNCE: mean over queries of -log softmax(q . k / tau)[positive].

    query (N, D); keys (M, D); positives (N,) long: index of each query's positive key among ``keys`` (default
    ``arange(N)``, i.e. query i pairs with key i, which needs M >= N). With ``normalize`` both are L2-normalised first
    (cosine similarity, MoCo / SimCLR); without it the raw dot product is the score (CPC). When distributed, the keys
    of every rank are gathered (without gradient) and positive indices are shifted to this rank's block.
    Returns a scalar.
    """
    _check_2d("query", query)
    _check_2d("keys", keys)
    _check_temperature(temperature)
    if query.shape[1] != keys.shape[1]:
        raise ValueError(f"query dim {query.shape[1]} != key dim {keys.shape[1]}: project both to the same size")
    n, m = query.shape[0], keys.shape[0]
    if n < 1:
        raise ValueError("info_nce got an empty batch of queries")
    explicit = positives is not None
    if positives is None:
        if m < n:
            raise ValueError(f"{n} queries but only {m} keys: without explicit positives query i pairs with key i")
        positives = torch.arange(n, device=query.device)
    if positives.shape != (n,):
        raise ValueError(f"positives must have shape ({n},), got {tuple(positives.shape)}")
    # Range check of explicit indices only (it syncs with the device); skipped on the meta device (FLOP counting).
    if explicit and positives.device.type != "meta" and (int(positives.min()) < 0 or int(positives.max()) >= m):
        raise ValueError(f"positive indices must lie in [0, {m}), got range [{int(positives.min())}, "
                         f"{int(positives.max())}]")
    rank, world = _world() if gather else (0, 1)
    if m * world < 2:
        raise ValueError(
            "InfoNCE needs at least one negative: got a single key in total. Use a batch of at least 2 samples "
            "(negatives come from the other samples of the batch)."
        )
    if normalize:
        query = F.normalize(query, dim=1)
        keys = F.normalize(keys, dim=1)
    if world > 1:
        keys = gather_across_ranks(keys, with_grad=False)
        positives = positives + rank * m
    logits = query @ keys.t() / temperature
    return F.cross_entropy(logits, positives.to(logits.device))


def nt_xent(z1: Tensor, z2: Tensor, temperature: float = 0.5, gather: bool = True) -> Tensor:
    """SimCLR's NT-Xent on two views: z1, z2 (N, D), row i of both comes from sample i. Returns a scalar.

    l(i, j) = -log exp(sim(z_i, z_j) / tau) / sum_{k != i} exp(sim(z_i, z_k) / tau) over the 2N embeddings
    (sim = cosine similarity), averaged over all 2N anchors. When distributed, the embeddings of every rank are
    gathered *with* gradient so that each rank's anchors see all 2 * world * N - 2 negatives.
    """
    _check_2d("z1", z1)
    _check_2d("z2", z2)
    _check_temperature(temperature)
    if z1.shape != z2.shape:
        raise ValueError(f"the two views must have the same shape, got {tuple(z1.shape)} and {tuple(z2.shape)}")
    rank, world = _world() if gather else (0, 1)
    n = z1.shape[0]
    if n * world < 2:
        raise ValueError(
            f"NT-Xent needs at least 2 samples per view in total (got {n * world}): with one sample the only "
            "other embedding is the positive, so there is no negative. Increase the batch size."
        )
    z1 = F.normalize(z1, dim=1)
    z2 = F.normalize(z2, dim=1)
    anchors = torch.cat([z1, z2], dim=0)  # (2N, D), this rank's anchors
    if world > 1:
        all1, all2 = gather_across_ranks(z1, with_grad=True), gather_across_ranks(z2, with_grad=True)
        offset = rank * n
    else:
        all1, all2, offset = z1, z2, 0
    total = all1.shape[0]
    candidates = torch.cat([all1, all2], dim=0)  # (2 * world * N, D): [view 1 of all ranks, view 2 of all ranks]
    logits = anchors @ candidates.t() / temperature
    local = torch.arange(n, device=z1.device) + offset
    self_index = torch.cat([local, local + total])  # where each anchor sits among the candidates
    positive_index = torch.cat([local + total, local])  # the other view of the same sample
    # An anchor is never its own negative: mask its similarity with itself out of the softmax.
    logits = logits.masked_fill(
        F.one_hot(self_index, num_classes=candidates.shape[0]).bool(), float("-inf")
    )
    return F.cross_entropy(logits, positive_index)


def symmetric_info_nce(q1: Tensor, q2: Tensor, k1: Tensor, k2: Tensor, temperature: float = 0.2,
                       gather: bool = True) -> Tensor:
    """MoCo v3 loss: ctr(q1, k2) + ctr(q2, k1), ctr(q, k) = 2 * tau * InfoNCE(q, k) with cosine similarity.

    q1, q2 (N, D): predictor outputs of the two views (online branch); k1, k2 (N, D): momentum-encoder outputs
    (no gradient is taken through them). The 2 * tau factor is the authors' (it makes the gradient scale
    independent of tau). Returns a scalar.
    """
    k1, k2 = k1.detach(), k2.detach()
    scale = 2.0 * temperature
    return scale * (info_nce(q1, k2, temperature=temperature, gather=gather)
                    + info_nce(q2, k1, temperature=temperature, gather=gather))
