"""What the loop reads each step: the batch of views, built in the DataLoader workers.

A method's views are a pure function of its crops and a generator (``PretextTask.view_fn``); the generator of step
``s`` on rank ``r`` is seeded with ``(seed, s, r)`` and the crops are a pure function of ``(seed, sample index)``
(``nnssl.data.preprocessed``). ``StepViews`` binds the two, so a worker can build step ``s``'s views without the
task, and the main process only moves tensors to the device and steps. View building always runs with one thread
(DataLoader workers run with one; with ``num_workers=0`` the main process limits itself to one while it builds):
reductions then sum in one order and the views of a step are bitwise the same with any number of workers, which
keeps resume exact when ``--num-workers`` changes.

A ``ValueError`` of the view function (a batch or crop the method cannot take) comes back from the worker as a
value and is raised again in the main process with its own message, not the worker's traceback.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from nnssl.data.preprocessed import RandomCropDataset, StepBatches
from nnssl.tasks.base import ViewFn

#: Key of a batch that carries a view function's ValueError instead of views.
ERROR_KEY = "__view_error__"


def views_generator(seed: int, step: int, rank: int) -> torch.Generator:
    """The generator of the views of ``step`` on ``rank`` (resume depends on it staying the same)."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step * 1_009 + rank) % (2**63 - 1))


@contextmanager
def one_thread() -> Iterator[None]:
    """torch's intra-op threads limited to one inside the block (restored after)."""
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@dataclass(frozen=True)
class StepViews:
    """A step's crops -> its views: ``view_fn(crops, views_generator(seed, step, rank))`` on one thread.

    Picklable (the transform of ``StepBatches`` in the workers); a ValueError of ``view_fn`` is returned as
    ``{ERROR_KEY: message}`` when ``errors_as_values`` (in workers), raised otherwise."""

    view_fn: ViewFn
    seed: int
    rank: int = 0
    errors_as_values: bool = True

    def __call__(self, crops: Tensor, step: int) -> dict[str, Any]:
        with one_thread():
            try:
                return self.view_fn(crops, views_generator(self.seed, step, self.rank))
            except ValueError as e:
                if not self.errors_as_values:
                    raise
                return {ERROR_KEY: str(e)}


def check_batch(batch: Any) -> Any:
    """The batch, or the ValueError a worker's view function raised."""
    if isinstance(batch, dict) and ERROR_KEY in batch:
        raise ValueError(batch[ERROR_KEY])
    return batch


@dataclass
class StepLoader:
    """The loop's DataLoader and where the views are built: ``in_workers`` (its batches are views), else the main
    process applies ``main_views`` to the crops it yields (``num_workers=0``, or a task without ``view_fn``)."""

    loader: DataLoader
    in_workers: bool
    main_views: Any  # (crops, step) -> views, in the main process; None when in_workers

    def views(self, batch: Any, step: int) -> dict[str, Any]:
        """Views of ``step`` from what the loader yielded (built here when not in the workers)."""
        return check_batch(batch) if self.in_workers else check_batch(self.main_views(batch, step))


def make_step_loader(crops: RandomCropDataset, view_fn: ViewFn | None, make_views: Any, seed: int, start_step: int,
                     total_steps: int, batch_size: int, rank: int = 0, world_size: int = 1, num_workers: int = 0,
                     pin_memory: bool = False, prefetch_factor: int = 2) -> StepLoader:
    """The loader of steps ``start_step .. total_steps - 1``: views built in its workers when ``num_workers > 0``
    and the task has a ``view_fn``; else it yields crops and the main process builds the views (``make_views`` of
    the task when it has no ``view_fn``), on one thread in both cases."""
    in_workers = num_workers > 0 and view_fn is not None
    if view_fn is not None:
        main: Any = StepViews(view_fn, seed, rank, errors_as_values=False)
    else:
        def main(batch: Tensor, step: int) -> dict[str, Any]:
            with one_thread():
                return make_views(batch, views_generator(seed, step, rank))
    dataset = StepBatches(crops, batch_size, rank, world_size, StepViews(view_fn, seed, rank) if in_workers else None)
    loader = DataLoader(dataset, batch_size=None, sampler=range(start_step, total_steps), num_workers=num_workers,
                        pin_memory=pin_memory, prefetch_factor=prefetch_factor if num_workers > 0 else None)
    return StepLoader(loader, in_workers, None if in_workers else main)


__all__ = ["ERROR_KEY", "StepLoader", "StepViews", "check_batch", "make_step_loader", "one_thread",
           "views_generator"]
