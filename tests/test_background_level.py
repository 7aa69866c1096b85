"""The loader's background level (nnssl.data.preprocessed.background_threshold): read from a bounded number of
voxels by contiguous slices (a blosc2 case is never decompressed whole), the same on numpy and blosc2 arrays, and
between the air around a body and the body."""
from __future__ import annotations

import numpy as np
import pytest

from nnssl.data.preprocessed import BACKGROUND_BLOCK_EDGE, BACKGROUND_BLOCKS, background_threshold


class Recording:
    """An image stand-in that records every read."""

    def __init__(self, array: np.ndarray) -> None:
        self.array, self.reads = array, []
        self.shape = array.shape

    def __getitem__(self, index):
        self.reads.append(index)
        return self.array[index]


def _body(shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """Air (-1 with noise) around an ellipsoidal body (values about 1)."""
    rng = np.random.default_rng(seed)
    grid = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    inside = sum(g**2 for g in grid) < 0.6
    image = np.where(inside, 1.0, -1.0) + 0.05 * rng.standard_normal(shape)
    return image[None].astype(np.float32)


@pytest.mark.parametrize("shape", [(40, 40, 40), (256, 192, 160)])
def test_threshold_reads_a_bounded_sample_by_slices(shape):
    array = _body(shape)
    image = Recording(array)
    level = background_threshold(image)
    body = array[0] > 0
    assert (array[0][body] > level).mean() > 0.999  # the body counts as foreground
    assert (array[0][~body] > level).mean() < 0.05  # the air around it does not
    voxels = 0
    for index in image.reads:
        assert index[0] == 0 and all(isinstance(s, slice) and s.step is None for s in index[1:]), index
        voxels += int(np.prod([s.stop - s.start for s in index[1:]]))
    assert len(image.reads) <= BACKGROUND_BLOCKS**3
    assert voxels <= BACKGROUND_BLOCKS**3 * BACKGROUND_BLOCK_EDGE**3  # whatever the volume's size


def test_small_images_and_blosc2_arrays():
    blosc2 = pytest.importorskip("blosc2")
    array = _body((64, 48, 40), seed=1)
    stored = blosc2.asarray(array, chunks=(1, 16, 16, 16), blocks=(1, 8, 8, 8))
    assert background_threshold(stored) == background_threshold(array)
    tiny = _body((8, 5, 3), seed=2)  # smaller than a block on every axis: the whole image, once per position
    assert np.isfinite(background_threshold(tiny))
