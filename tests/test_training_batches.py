"""Views off the critical path: every method's view function is picklable and pure, so a worker process (spawned:
the function travels pickled) builds bitwise the views the main process builds; the step stream partitions the
samples over steps and ranks; a view function's ValueError reaches the main process as its own one-line message."""
from __future__ import annotations

import pickle
from functools import partial

import pytest
import torch
import torch.multiprocessing as mp
from torch.utils.data import DataLoader

from nnssl.data.preprocessed import StepBatches
from nnssl.tasks import method_names
from nnssl.training.batches import StepViews, check_batch, make_step_loader, one_thread, views_generator
from task_helpers import build_task, crops_for

METHODS = sorted(method_names())


def _views_in_child(payload: bytes) -> dict[str, torch.Tensor]:
    """Runs in a spawned process: unpickle (view function, crops, step) and build the views as a worker does."""
    torch.set_num_threads(1)
    fn, crops, step = pickle.loads(payload)
    return fn(crops, step)


def test_every_method_builds_the_same_views_in_a_spawned_worker():
    torch.set_num_threads(2)  # the main process has several threads; the worker one
    jobs, expected = [], {}
    for name in METHODS:
        task = build_task(name)
        fn = task.view_fn()
        assert fn is not None, f"{name} has no view_fn: its views would be built in the main process"
        crops = crops_for(name, batch=2, seed=3)
        views = StepViews(fn, seed=5, rank=1, errors_as_values=False)
        expected[name] = views(crops, 7)
        # the view function is the method's make_views without the task
        direct = task.make_views(crops, views_generator(5, 7, 1))
        assert direct.keys() == expected[name].keys()
        jobs.append((name, pickle.dumps((views, crops, 7))))
    ctx = mp.get_context("spawn")
    with ctx.Pool(1) as pool:
        results = pool.map(_views_in_child, [payload for _, payload in jobs])
    for (name, _), got in zip(jobs, results):
        want = expected[name]
        assert got.keys() == want.keys(), name
        for key in want:
            assert got[key].dtype == want[key].dtype and torch.equal(got[key], want[key]), f"{name}: {key} differs"


def test_views_do_not_depend_on_the_thread_count():
    """one_thread makes reductions (photometric mean/std) sum in one order: SimCLR's views at 64^3 differ in the
    last bits between 1 and 2 threads without it."""
    task = build_task("simclr")
    fn = task.view_fn()
    crops = crops_for("simclr", batch=2, seed=1)
    torch.set_num_threads(2)
    with one_thread():
        a = fn(crops, torch.Generator().manual_seed(0))
    assert torch.get_num_threads() == 2
    torch.set_num_threads(1)
    b = fn(crops, torch.Generator().manual_seed(0))
    torch.set_num_threads(2)
    assert all(torch.equal(a[k], b[k]) for k in a)


class _Crops:
    """Stands in for RandomCropDataset: sample k is a constant crop of value k."""

    def __init__(self, size: int = 4) -> None:
        self.size = size

    def __len__(self) -> int:
        return 10

    def __getitem__(self, k: int) -> torch.Tensor:
        return torch.full((1, self.size, self.size, self.size), float(k))


def test_step_batches_partition_the_stream_over_steps_and_ranks():
    seen = []
    for rank in range(2):
        batches = StepBatches(_Crops(), batch_size=3, rank=rank, world_size=2)
        for step in range(3):
            batch = batches[step]
            assert batch.shape == (3, 1, 4, 4, 4)
            seen += [int(v) for v in batch[:, 0, 0, 0, 0]]
    assert sorted(seen) == list(range(18))
    with pytest.raises(ValueError, match="rank"):
        StepBatches(_Crops(), batch_size=2, rank=2, world_size=2)


def _mean_views(crops: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
    return {"x": crops + torch.rand(crops.shape, generator=generator)}


def _refusing_views(crops: torch.Tensor, generator: torch.Generator, *, why: str) -> dict[str, torch.Tensor]:
    raise ValueError(why)


@pytest.mark.parametrize("workers", [0, 2])
def test_step_loader_yields_the_steps_views_in_order(workers):
    loader = make_step_loader(_Crops(), _mean_views, None, seed=0, start_step=2, total_steps=6, batch_size=2,
                              num_workers=workers)
    assert loader.in_workers == (workers > 0)
    got = [loader.views(batch, step) for step, batch in zip(range(2, 6), loader.loader)]
    for step, views in zip(range(2, 6), got):
        crops = torch.stack([_Crops()[k] for k in range(2 * step, 2 * step + 2)])
        torch.testing.assert_close(views["x"], _mean_views(crops, views_generator(0, step, 0))["x"], rtol=0, atol=0)


def test_a_task_without_view_fn_gets_its_views_built_in_the_main_process():
    calls = []

    def make_views(crops, generator):
        calls.append(torch.get_num_threads())
        return {"x": crops}

    loader = make_step_loader(_Crops(), None, make_views, seed=0, start_step=0, total_steps=2, batch_size=1,
                              num_workers=1)
    assert not loader.in_workers
    for step, batch in enumerate(loader.loader):
        loader.views(batch, step)
    assert calls == [1, 1]


def test_a_view_error_in_a_worker_is_one_line_in_the_main_process():
    fn = partial(_refusing_views, why="SimCLR needs a batch of at least 2 crops")
    loader = make_step_loader(_Crops(), fn, None, seed=0, start_step=0, total_steps=1, batch_size=1, num_workers=1)
    batch = next(iter(loader.loader))
    with pytest.raises(ValueError) as info:
        loader.views(batch, 0)
    assert str(info.value) == "SimCLR needs a batch of at least 2 crops"
    with pytest.raises(ValueError, match="at least 2"):
        check_batch(StepViews(fn, 0)(torch.zeros(1, 1, 4, 4, 4), 0))
