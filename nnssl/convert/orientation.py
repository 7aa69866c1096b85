"""Exact axis maps for imported encoders: the weights of a network trained on one array orientation, re-expressed
for arrays in another orientation.

Public Swin weights were trained on MONAI arrays ``(C, X, Y, Z)`` after ``Orientationd(axcodes="RAS")``: array axis
0 increases toward the patient's Right, 1 toward Anterior, 2 toward Superior. nnU-Net reads images with SimpleITK
(``sitk.GetArrayFromImage``: array axes are the ITK index axes reversed, (k, j, i)), does not reorient them, and
then applies the plans' ``transpose_forward``. The two arrays of the same image differ by an axis permutation and by
axis reversals (flips). An ``AxisMap`` is that transform ``T``; ``orient_encoder`` rewrites an encoder so that

    converted(T(x)) == T(original(x))     for each of the five encoder outputs,

with ``T`` applied to the spatial axes of the input and of every output. What changes (all exact):

- every convolution kernel (patch embedding, SwinUNETR-v2 ``layers{s}c`` blocks): spatial dims permuted and flipped;
- every relative-position-bias table: MONAI indexes it by the relative offset (dd, dh, dw) of two tokens as
  ``(dd + w-1) * (2w-1)^2 + (dh + w-1) * (2w-1) + (dw + w-1)`` (monai/networks/nets/swin_unetr.py, WindowAttention);
  viewed as a (2w-1, 2w-1, 2w-1, heads) grid, a permutation of the axes permutes the grid's axes and a flip negates
  an offset, i.e. reverses that grid axis;
- the patch-merging concatenation order: sub-grid offset (a, b, c) of the source lands at the permuted offset, with
  ``1 - a`` on a flipped axis; the LayerNorm/reduction chunks are permuted back to the encoder's named order where
  the new offsets are a rearrangement of it, otherwise the new order is kept in the config (``merge_order``);
- the cyclic window shift: a flipped axis of odd window size w needs the shift w - w//2 instead of w//2 (the
  shifted partition [0, s), [s, s+w), ..., [M-w+s, M) mirrors to one starting with w-s), kept as ``window_shift``.

Exact equality holds when no window is padded or shrunk: every token grid the attention runs on (input / 2, / 4,
/ 8, / 16 along each axis) is a multiple of the window size, i.e. every input axis is a multiple of 16 * window_size
(and of 32). MONAI pads incomplete windows at the high end of an axis; a flip moves that partial window to the other
end, so for other sizes the converted encoder carries the source's weights in the target's axes but does not compute
the same function. ``exact_input_condition`` states this for a config.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

from torch import Tensor

from nnssl.encoders.merging import MERGE_ORDERS, chunk_permutation, merge_order_name, permute_merging_chunks
from nnssl.encoders.swin import ENCODER_PREFIX, SWIN_DIVISOR, EncoderConfig

#: Axis letters by world axis, (positive, negative) in nibabel's "toward" convention (RAS+: R, A, S).
_AXIS_LETTERS = (("R", "L"), ("A", "P"), ("S", "I"))
_BIAS_TABLE = re.compile(r"\.attn\.relative_position_bias_table$")
_MERGING = re.compile(r"\.downsample\.(reduction\.weight|norm\.weight|norm\.bias)$")


@dataclass(frozen=True)
class AxisMap:
    """Target array axis ``a`` is source axis ``perm[a]``, reversed where ``flips[a]``.

    ``apply`` maps a tensor (B, C, s0, s1, s2) of the source orientation to the target's.
    """

    perm: tuple[int, int, int] = (0, 1, 2)
    flips: tuple[bool, bool, bool] = (False, False, False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "perm", tuple(int(p) for p in self.perm))
        object.__setattr__(self, "flips", tuple(bool(f) for f in self.flips))
        if sorted(self.perm) != [0, 1, 2] or len(self.flips) != 3:
            raise ValueError(f"axis map perm={self.perm}, flips={self.flips}: perm must order 0, 1, 2 and flips "
                             "hold 3 booleans")

    @property
    def is_identity(self) -> bool:
        """True when the map keeps every axis in place and unreversed."""
        return self.perm == (0, 1, 2) and not any(self.flips)

    def apply(self, x: Tensor) -> Tensor:
        """(B, C, s0, s1, s2) in source axes -> (B, C, ...) in target axes."""
        x = x.permute(0, 1, *(2 + p for p in self.perm))
        dims = [2 + a for a in range(3) if self.flips[a]]
        return x.flip(dims) if dims else x

    def inverse(self) -> "AxisMap":
        """The map back: ``m.inverse().apply(m.apply(x)) == x``."""
        inv = [0, 0, 0]
        flips = [False, False, False]
        for a, p in enumerate(self.perm):
            inv[p] = a
            flips[p] = self.flips[a]
        return AxisMap(tuple(inv), tuple(flips))  # type: ignore[arg-type]

    def describe(self) -> str:
        """'target axis 0 = source axis 2, axis 1 = source axis 1 reversed, ...' in one line."""
        if self.is_identity:
            return "identity (the encoder keeps the source's axes)"
        parts = [f"{a} <- {p}{' reversed' if f else ''}" for a, (p, f) in enumerate(zip(self.perm, self.flips))]
        return "target axis <- source axis: " + ", ".join(parts)

    def to_dict(self) -> dict:
        """``{"perm": [...], "flips": [...]}`` for reports and provenance."""
        return {"perm": list(self.perm), "flips": list(self.flips)}


def _letter_axis(letter: str, codes: str) -> tuple[int, bool]:
    for world, (pos, neg) in enumerate(_AXIS_LETTERS):
        if letter == pos:
            return world, True
        if letter == neg:
            return world, False
    raise ValueError(f"axis codes {codes!r}: {letter!r} is not one of R, L, A, P, S, I")


def check_axis_codes(codes: str) -> str:
    """Upper-case 3-letter codes naming each world axis once, e.g. 'RAS', 'SPL'; raises ValueError otherwise."""
    codes = str(codes).strip().upper()
    if len(codes) != 3:
        raise ValueError(f"axis codes {codes!r}: give 3 letters, one per array axis, from R/L, A/P, S/I (e.g. RAS)")
    worlds = [_letter_axis(c, codes)[0] for c in codes]
    if sorted(worlds) != [0, 1, 2]:
        raise ValueError(f"axis codes {codes!r} name a world axis twice: use one of R/L, one of A/P, one of S/I")
    return codes


def axis_map_from_codes(source: str, target: str) -> AxisMap:
    """The map from arrays whose axes increase toward ``source`` (e.g. 'RAS') to arrays with ``target`` codes.

    Codes follow nibabel / SimpleITK's DICOMOrient: letter a is the direction in which array index a increases.
    """
    source, target = check_axis_codes(source), check_axis_codes(target)
    src = [_letter_axis(c, source) for c in source]
    perm, flips = [], []
    for letter in target:
        world, positive = _letter_axis(letter, target)
        b = next(i for i, (w, _) in enumerate(src) if w == world)
        perm.append(b)
        flips.append(src[b][1] != positive)
    return AxisMap(tuple(perm), tuple(flips))  # type: ignore[arg-type]


def itk_index_codes(direction: Sequence[float]) -> str:
    """Axis codes of the ITK index axes (i, j, k) of an image with this direction (SimpleITK ``GetDirection()``,
    row-major 3x3, columns = index axes in ITK's LPS world); oblique axes take their closest world axis."""
    d = [float(v) for v in direction]
    if len(d) != 9:
        raise ValueError(f"direction {direction!r}: expected the 9 cosines of a 3D image")
    codes = []
    for i in range(3):
        column = [d[3 * r + i] for r in range(3)]
        world = max(range(3), key=lambda r: abs(column[r]))
        # ITK's world is LPS: +x points Left, +y Posterior, +z Superior (RAS negates x and y).
        positive_ras = column[world] < 0 if world in (0, 1) else column[world] > 0
        codes.append(_AXIS_LETTERS[world][0 if positive_ras else 1])
    return check_axis_codes("".join(codes))


def nnunet_array_codes(direction: Sequence[float], transpose_forward: Sequence[int] = (0, 1, 2)) -> str:
    """Axis codes of nnU-Net's preprocessed arrays for an image with this direction.

    nnU-Net's SimpleITKIO gives ``sitk.GetArrayFromImage`` (the ITK index axes reversed: k, j, i) without reorienting,
    and its preprocessor then applies ``data.transpose([0, *[i + 1 for i in transpose_forward]])``.
    """
    numpy_codes = itk_index_codes(direction)[::-1]
    tf = [int(t) for t in transpose_forward]
    if sorted(tf) != [0, 1, 2]:
        raise ValueError(f"transpose_forward {list(transpose_forward)} is not an order of 0, 1, 2")
    return "".join(numpy_codes[t] for t in tf)


def dataset_array_codes(paths: Sequence[str], transpose_forward: Sequence[int] = (0, 1, 2)) -> str:
    """nnU-Net array codes shared by every image in ``paths`` (read from the headers with SimpleITK).

    Raises ValueError when the images disagree: nnU-Net keeps each image's own orientation, so one axis map cannot fit
    a dataset whose files are stored in several orientations.
    """
    import SimpleITK as sitk  # the reader nnU-Net uses; imported here so that converting needs it only for this

    found: dict[str, list[str]] = {}
    for path in paths:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        try:
            reader.ReadImageInformation()
        except RuntimeError as e:
            raise ValueError(f"{path}: SimpleITK cannot read the image header ({str(e).strip().splitlines()[-1]})") \
                from None
        if reader.GetDimension() != 3:
            raise ValueError(f"{path}: a {reader.GetDimension()}D image; the axis map needs 3D images")
        found.setdefault(nnunet_array_codes(reader.GetDirection(), transpose_forward), []).append(str(path))
    if not found:
        raise ValueError("no images given to read the orientation from")
    if len(found) > 1:
        listing = "; ".join(f"{codes}: {len(files)} image(s), e.g. {files[0]}" for codes, files in found.items())
        raise ValueError(f"the images are stored in {len(found)} orientations ({listing}): nnU-Net does not reorient "
                         "them, so no single axis map fits. Reorient the dataset's files to one orientation first")
    return next(iter(found))


def exact_input_condition(cfg: EncoderConfig) -> int:
    """The multiple every input axis must be for ``orient_encoder``'s result to equal the source exactly."""
    step = 16 * cfg.window_size
    a, b = step, SWIN_DIVISOR
    while b:
        a, b = b, a % b
    return step * SWIN_DIVISOR // a


def _map_kernel(t: Tensor, m: AxisMap) -> Tensor:
    """(O, I, k0, k1, k2) convolution kernel in source axes -> target axes."""
    t = t.permute(0, 1, *(2 + p for p in m.perm))
    dims = [2 + a for a in range(3) if m.flips[a]]
    return (t.flip(dims) if dims else t).contiguous()


def _map_bias_table(t: Tensor, m: AxisMap, w: int) -> Tensor:
    """((2w-1)^3, heads) relative-position-bias table re-indexed for the target axes."""
    side = 2 * w - 1
    grid = t.reshape(side, side, side, t.shape[-1]).permute(*m.perm, 3)
    dims = [a for a in range(3) if m.flips[a]]
    return (grid.flip(dims) if dims else grid).reshape(t.shape).contiguous()


def _map_order(order: Sequence[tuple[int, int, int]], m: AxisMap) -> tuple[tuple[int, int, int], ...]:
    """Source sub-grid offsets (in source axes) -> the same sub-grids' offsets in target axes."""
    return tuple(tuple(o[m.perm[a]] ^ int(m.flips[a]) for a in range(3)) for o in order)  # type: ignore[misc]


def orient_encoder(state: dict[str, Tensor], cfg: EncoderConfig, m: AxisMap) -> tuple[dict[str, Tensor],
                                                                                         EncoderConfig, list[str]]:
    """Rewrite validated ``swinViT.*`` tensors of an encoder with config ``cfg`` for inputs transformed by ``m``.

    Returns (tensors, config, notes): the config carries the mapped ``merge_order`` and ``window_shift``; notes say
    in words what changed (for the load report).
    """
    if m.is_identity:
        return dict(state), cfg, []
    out: dict[str, Tensor] = {}
    new_order = _map_order(cfg.merge_order, m)
    # Keep the encoder's named order when the mapped sub-grids are a rearrangement of it (always so for MONAI's
    # distinct order): the chunk permutation is exact and the checkpoint stays loadable by that code.
    target_order = new_order
    perm = None
    for candidate in (cfg.merge_order, *MERGE_ORDERS.values()):
        perm = chunk_permutation(new_order, candidate)
        if perm is not None:
            target_order = tuple(candidate)
            break
    w = cfg.window_size
    for key, value in state.items():
        if value.ndim == 5 and key.startswith(ENCODER_PREFIX):
            out[key] = _map_kernel(value, m)
        elif _BIAS_TABLE.search(key):
            out[key] = _map_bias_table(value, m, w)
        elif _MERGING.search(key) and perm is not None:
            out[key] = permute_merging_chunks(value, perm)
        else:
            out[key] = value
    shift = cfg.shifts()
    new_shift = tuple(w - shift[p] if f and shift[p] > 0 else shift[p] for p, f in zip(m.perm, m.flips))
    new_cfg = cfg.replace(merge_order=target_order, window_shift=new_shift if w > 1 else None)
    notes = [m.describe(),
             "convolution kernels (patch embedding" + (", layers{s}c" if cfg.use_v2 else "") + ") permuted/flipped",
             "relative-position-bias tables re-indexed by the mapped offsets"]
    name = merge_order_name(target_order)
    if perm is not None:
        notes.append(f"patch-merging chunks permuted to keep the {name or 'encoder'} order")
    else:
        notes.append(f"patch-merging order becomes {[list(o) for o in target_order]} (no rearrangement of a named "
                     "order: the encoder keeps it in merge_order)")
    if new_cfg.window_shift is not None:
        notes.append(f"window shift {list(new_cfg.shifts())} (odd window {w}: w - w//2 on the flipped axes)")
    notes.append(f"exact for inputs whose every axis is a multiple of {exact_input_condition(cfg)}")
    return out, new_cfg, notes


__all__ = ["AxisMap", "axis_map_from_codes", "check_axis_codes", "dataset_array_codes", "exact_input_condition",
           "itk_index_codes", "nnunet_array_codes", "orient_encoder"]
