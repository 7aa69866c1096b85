"""nnssl.convert / nnssl_convert: every source format is built from a freshly initialised model of that format's own
layout (no downloads), converted, loaded into nnssl's encoder, and must compute the same features as the source;
exports are loaded back the way the publisher's own code loads them and must compute the same features again.

Source layouts reproduced here (from the authors' code, re-written for the test; documentation/checkpoints.md cites
the files):
- MONAI SwinUNETR: the real class, saved with wrappers and ``module.`` prefixes, with MONAI >= 1.5's patch merging
  or the MONAI 0.9-1.4 one (``LegacyPatchMerging``, the order of MONAI@1.4.0 swin_unetr.py PatchMerging);
- SwinUNETR self-supervised (Tang et al. 2022): research-contributions SwinUNETR/Pretrain ``models/ssl_head.py``
  attribute names (``swin_vit``, ``rotation_head``, ``contrastive_head``, ``conv``) and the ``model_swinvit.pt``
  release layout that MONAI's ``SwinUNETR.load_from`` reads (``module.layers1.0.blocks.0.mlp.fc1.weight``, ...);
- SMIT (The-Veeraraghavan-Lab/SMIT ``models/Trans.py``): a small re-implementation of its Swin with its key names,
  optional qkv bias and patch norm, and its patch-merging concatenation order;
- VoCo (Large-Scale-Medical ``models/voco_head.py``): ``VoCoHead`` = ``backbone`` (SwinUNETR-v2 ``swinViT`` and the
  ``encoder1-4``/``encoder10`` blocks) + ``student``/``teacher`` projection heads; VoCo CVPR's two-branch layout;
- SuPreM (``backbone/Universal_model.py``): ``Universal_model`` with a SwinUNETR ``backbone`` and its CLIP-driven heads,
  saved as ``{"net": module.*}``;
- BrainSegFounder (``pretrain/models/ssl_head.py``): ``SSLHead`` with a two-channel ``swinViT`` and its heads;
- the model-zoo bundle swin_unetr_btcv_segmentation: a bare SwinUNETR state dict in ``models/model.pt`` of a bundle
  folder with ``configs/metadata.json``.
"""
from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nnssl.checkpoint import load_checkpoint, load_encoder_into, save_checkpoint
from nnssl.cli.convert import main as convert_main
from nnssl.convert import Orientation, convert_file, load_source
from nnssl.convert.orientation import AxisMap, axis_map_from_codes, nnunet_array_codes, orient_encoder
from nnssl.encoders.layout import explain_encoder_mismatch, infer_encoder_config, window_from_bias_table
from nnssl.encoders.merging import MONAI_LEGACY_MERGE_ORDER, MONAI_MERGE_ORDER
from nnssl.errors import ArchitectureMismatchError, CheckpointError, ConversionError
from nnssl.encoders.swin import EncoderConfig, SwinEncoder, build_swinunetr

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
ATOL, RTOL = 1e-5, 1e-4

# Non-default heads and depths, so that inference cannot pass by returning defaults.
CFG = EncoderConfig(feature_size=12, depths=(2, 2, 4, 2), num_heads=(3, 3, 6, 6), window_size=4)
LEGACY = CFG.replace(merge_order="monai-legacy")
V2_LEGACY = LEGACY.replace(use_v2=True)

#: The sub-grid slices of MONAI 0.9-1.4's PatchMerging ("merging"; MONAI@1.4.0 monai/networks/nets/swin_unetr.py,
#: PatchMerging.forward, x0..x7), as (d, h, w) starts of the ::2 slices.
MONAI_1_4_SLICES = ((0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 0, 1), (0, 1, 0), (0, 0, 1), (1, 1, 1))


class LegacyPatchMerging(nn.Module):
    """MONAI 0.9-1.4's 3D PatchMerging, the class every public SwinUNETR release before MONAI 1.5 was trained with."""

    def __init__(self, dim: int, norm_layer=nn.LayerNorm, spatial_dims: int = 3) -> None:
        super().__init__()
        self.reduction = nn.Linear(8 * dim, 2 * dim, bias=False)
        self.norm = norm_layer(8 * dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.reduction(self.norm(torch.cat([x[:, a::2, b::2, c::2, :] for a, b, c in MONAI_1_4_SLICES], -1)))


def randomize_(module: nn.Module, seed: int) -> nn.Module:
    """Random weights everywhere (LayerNorm scales around 1) so that a misplaced tensor changes the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim == 1 and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return module.eval()


def legacy(cfg: EncoderConfig) -> bool:
    return cfg.merge_order == MONAI_LEGACY_MERGE_ORDER


def monai_swin(cfg: EncoderConfig) -> nn.Module:
    """MONAI SwinTransformer as SwinUNETR and the SSL heads build it, with MONAI 0.9-1.4's merging for legacy cfgs."""
    from monai.networks.nets.swin_unetr import SwinTransformer

    return SwinTransformer(in_chans=cfg.in_channels, embed_dim=cfg.feature_size, window_size=(cfg.window_size,) * 3,
                           patch_size=(2, 2, 2), depths=cfg.depths, num_heads=cfg.num_heads, mlp_ratio=4.0,
                           qkv_bias=True, norm_layer=nn.LayerNorm, spatial_dims=3, use_v2=cfg.use_v2,
                           downsample=LegacyPatchMerging if legacy(cfg) else "merging")


def monai_swinunetr(cfg: EncoderConfig, out_channels: int = 3) -> nn.Module:
    """MONAI SwinUNETR (encoder + CNN decoder), with MONAI 0.9-1.4's merging for legacy cfgs."""
    from monai.networks.nets import SwinUNETR

    assert cfg.merge_order in (MONAI_MERGE_ORDER, MONAI_LEGACY_MERGE_ORDER)
    return SwinUNETR(in_channels=cfg.in_channels, out_channels=out_channels, feature_size=cfg.feature_size,
                     depths=cfg.depths, num_heads=cfg.num_heads, window_size=cfg.window_size, use_v2=cfg.use_v2,
                     downsample=LegacyPatchMerging if legacy(cfg) else "merging")


def volume(size: int = 32, seed: int = 0) -> Tensor:
    return torch.randn(1, 1, size, size, size, generator=torch.Generator().manual_seed(seed))


def nnssl_features(path: Path, x: Tensor) -> list[Tensor]:
    """Load an nnssl checkpoint the way the fine-tuning code does and run the encoder."""
    ckpt = load_checkpoint(path)
    encoder = SwinEncoder(EncoderConfig.from_dict(ckpt["encoder_config"])).eval()
    report = load_encoder_into(encoder, ckpt)
    assert not report.missing and not report.shape_mismatch
    with torch.no_grad():
        return encoder(x)


def assert_same_features(a: list[Tensor], b: list[Tensor]) -> None:
    assert len(a) == len(b) == 5
    for i, (u, v) in enumerate(zip(a, b)):
        assert u.shape == v.shape, f"scale {i}: {u.shape} vs {v.shape}"
        torch.testing.assert_close(u, v, atol=ATOL, rtol=RTOL, msg=f"scale {i} differs")


# ---------------------------------------------------------------------------------------------------------------
# Architecture inference
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("rows,window", [(27, 2), (125, 3), (343, 4), (2197, 7)])
def test_window_from_bias_table_inverts_2w_minus_1_cubed(rows, window):
    assert window_from_bias_table(rows) == window
    assert (2 * window - 1) ** 3 == rows


def test_window_from_bias_table_rejects_non_cubic():
    with pytest.raises(ConversionError, match="non-cubic"):
        window_from_bias_table(7 * 7 * 13)  # a (4, 4, 7) window


@pytest.mark.parametrize("cfg", [
    CFG,
    EncoderConfig(feature_size=24, depths=(1, 2, 3, 1), num_heads=(2, 4, 8, 16), window_size=3, in_channels=2),
    EncoderConfig(feature_size=12, window_size=2, use_v2=True),
])
def test_infer_encoder_config_reads_every_setting(cfg):
    state = SwinEncoder(cfg).swin_state_dict()
    assert infer_encoder_config(state) == cfg
    # Without the swinViT. prefix too (bare SwinTransformer state dicts).
    assert infer_encoder_config({k[len("swinViT."):]: v for k, v in state.items()}) == cfg


def test_infer_encoder_config_names_what_it_cannot_build():
    state = SwinEncoder(CFG).swin_state_dict()
    state["swinViT.layers2.0.blocks.0.mlp.linear1.weight"] = torch.zeros(24 * 2, 24)  # mlp_ratio 2
    with pytest.raises(ConversionError, match="mlp_ratio"):
        infer_encoder_config(state)
    with pytest.raises(ConversionError, match="patch-embedding"):
        infer_encoder_config({"decoder.weight": torch.zeros(3)})


# ---------------------------------------------------------------------------------------------------------------
# MONAI SwinUNETR
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("wrap", [
    lambda sd: sd,
    lambda sd: {"state_dict": sd, "epoch": 3},
    lambda sd: {"model": {f"module.{k}": v for k, v in sd.items()}},
    lambda sd: {"net": {f"module._orig_mod.{k}": v for k, v in sd.items()}, "optimizer": {}},
], ids=["bare", "state_dict", "model+module", "net+module+compile"])
def test_monai_swinunetr_import_keeps_features(tmp_path, wrap):
    net = randomize_(build_swinunetr(CFG, out_channels=3), seed=1)
    src = tmp_path / "swinunetr.pt"
    torch.save(wrap(net.state_dict()), src)
    report = convert_file(src, tmp_path / "out.pt", "monai-swinunetr", merging="monai")
    assert report.config == CFG and not report.missing
    assert len(report.matched) == len(SwinEncoder(CFG).swin_state_dict())
    assert report.coverage.full and report.coverage.loaded_tensors == report.coverage.encoder_tensors
    assert any(k.startswith("decoder") or k.startswith("encoder1") for k, _ in report.dropped)
    x = volume()
    with torch.no_grad():
        expected = net.swinViT(x, normalize=True)
    assert_same_features(nnssl_features(tmp_path / "out.pt", x), expected)
    ckpt = load_checkpoint(tmp_path / "out.pt")
    assert ckpt["method"] == "imported-monai-swinunetr"
    assert ckpt["provenance"]["imported_from"]["file"] == str(src.resolve())
    # The fine-tuning network (SwinUNETR built from the stored config) takes it with no missing tensor.
    target = build_swinunetr(EncoderConfig.from_dict(ckpt["encoder_config"]), out_channels=2)
    assert load_encoder_into(target, ckpt).missing == []


def test_monai_swinunetr_needs_the_merge_order_and_it_changes_the_function(tmp_path):
    """Weights trained with MONAI < 1.5 import exactly only with --merging monai-legacy; as 'monai' they compute
    another function (same shapes, so nothing else would notice)."""
    net = randomize_(monai_swinunetr(LEGACY), seed=11)
    src = tmp_path / "legacy.pt"
    torch.save({"state_dict": net.state_dict()}, src)
    with pytest.raises(ConversionError, match="--merging monai-legacy"):
        convert_file(src, tmp_path / "out.pt", "monai-swinunetr")
    assert not (tmp_path / "out.pt").exists()
    x = volume(seed=5)
    with torch.no_grad():
        expected = net.swinViT(x, normalize=True)
    convert_file(src, tmp_path / "legacy_nnssl.pt", "monai-swinunetr", merging="monai-legacy")
    assert load_checkpoint(tmp_path / "legacy_nnssl.pt")["encoder_config"]["merge_order"] == "monai-legacy"
    assert_same_features(nnssl_features(tmp_path / "legacy_nnssl.pt", x), expected)
    convert_file(src, tmp_path / "wrong.pt", "monai-swinunetr", merging="monai")
    wrong = nnssl_features(tmp_path / "wrong.pt", x)
    assert torch.allclose(wrong[0], expected[0], atol=ATOL)  # before any merging: identical
    assert not torch.allclose(wrong[1], expected[1], atol=1e-3)


def test_encoder_config_keeps_merge_order_and_shift_through_json():
    for cfg in (LEGACY, CFG.replace(merge_order=[[1, 1, 1]] * 8), CFG.replace(window_size=3, window_shift=(1, 2, 2))):
        d = json.loads(json.dumps(cfg.to_dict()))
        assert EncoderConfig.from_dict(d) == cfg
    assert LEGACY.to_dict()["merge_order"] == "monai-legacy"
    assert CFG.replace(window_shift=(2, 2, 2)).window_shift is None  # MONAI's default spelled out
    with pytest.raises(ValueError, match="window_shift"):
        CFG.replace(window_shift=(0, 2, 2))
    with pytest.raises(ValueError, match="merge order"):
        CFG.replace(merge_order="monai-1.3")


def test_network_built_with_another_merge_order_refuses_the_checkpoint(tmp_path):
    encoder = randomize_(SwinEncoder(LEGACY), seed=2)
    save_checkpoint(tmp_path / "c.pt", {"method": "x", "encoder_config": LEGACY.to_dict(),
                                        "encoder": encoder.swin_state_dict()})
    ckpt = load_checkpoint(tmp_path / "c.pt")
    with pytest.raises(CheckpointError, match="merge_order: checkpoint monai-legacy, network monai"):
        load_encoder_into(build_swinunetr(CFG, 2), ckpt)
    assert load_encoder_into(build_swinunetr(LEGACY, 2), ckpt).missing == []


# ---------------------------------------------------------------------------------------------------------------
# SwinUNETR self-supervised (Tang et al. 2022)
# ---------------------------------------------------------------------------------------------------------------

class SSLHeadLayout(nn.Module):
    """Attribute names of research-contributions SwinUNETR/Pretrain/models/ssl_head.py (a small decoder)."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        dim = cfg.feature_size * 16
        self.swin_vit = monai_swin(cfg)  # research-contributions pins MONAI a23c7f54: legacy merging
        self.rotation_pre = nn.Identity()
        self.rotation_head = nn.Linear(dim, 4)
        self.contrastive_pre = nn.Identity()
        self.contrastive_head = nn.Linear(dim, 512)
        self.conv = nn.Sequential(nn.Conv3d(dim, dim // 2, 3, padding=1), nn.InstanceNorm3d(dim // 2), nn.LeakyReLU(),
                                  nn.Conv3d(dim // 2, cfg.in_channels, 1))


def release_layout(swin: nn.Module, cfg: EncoderConfig) -> dict:
    """model_swinvit.pt layout: module.<encoder key> with the older fc1/fc2 MLP names, plus the pretraining heads."""
    g = torch.Generator().manual_seed(5)
    dim = cfg.feature_size * 16
    sd = {}
    for k, v in swin.state_dict().items():
        sd["module." + k.replace(".mlp.linear1.", ".mlp.fc1.").replace(".mlp.linear2.", ".mlp.fc2.")] = v.clone()
    heads = {"norm.weight": (dim,), "norm.bias": (dim,), "convTrans3d.weight": (dim, cfg.in_channels, 4, 4, 4),
             "convTrans3d.bias": (cfg.in_channels,), "rotation_head.weight": (4, dim), "rotation_head.bias": (4,),
             "contrastive_head.weight": (512, dim), "contrastive_head.bias": (512,)}
    for k, shape in heads.items():
        sd["module." + k] = torch.randn(shape, generator=g)
    return {"state_dict": sd}


def test_swinunetr_ssl_pretrain_code_layout(tmp_path):
    model = randomize_(SSLHeadLayout(LEGACY), seed=2)
    src = tmp_path / "model_bestValRMSE.pt"
    # DistributedDataParallel in Pretrain/main.py adds "module."; the checkpoint dict is theirs.
    torch.save({"global_step": 10, "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()},
                "optimizer": {}}, src)
    report = convert_file(src, tmp_path / "out.pt", "swinunetr-ssl")
    dropped = {k for k, _ in report.dropped}
    assert {"rotation_head.weight", "contrastive_head.weight", "conv.0.weight"} <= dropped
    assert not report.missing and report.config == LEGACY
    x = volume(seed=1)
    with torch.no_grad():
        expected = model.swin_vit(x, normalize=True)
    assert_same_features(nnssl_features(tmp_path / "out.pt", x), expected)


def test_swinunetr_ssl_release_layout(tmp_path):
    swin = randomize_(monai_swin(LEGACY), seed=3)
    release = release_layout(swin, LEGACY)
    # The fixture has the release's key layout: MONAI's own loader for model_swinvit.pt accepts it.
    reference = monai_swinunetr(LEGACY, out_channels=2).eval()
    reference.load_from(release)
    src = tmp_path / "model_swinvit.pt"
    torch.save(release, src)
    report = convert_file(src, tmp_path / "out.pt", "swinunetr-ssl")
    renamed = [dst for _, dst, how in report.converted if "fc1/fc2" in how]
    assert len(renamed) == 4 * sum(CFG.depths)  # fc1/fc2 weight + bias per block
    assert {k for k, _ in report.dropped} == {"norm.weight", "norm.bias", "convTrans3d.weight", "convTrans3d.bias",
                                              "rotation_head.weight", "rotation_head.bias",
                                              "contrastive_head.weight", "contrastive_head.bias"}
    assert report.config.merge_order == MONAI_LEGACY_MERGE_ORDER and "a23c7f54" in report.computation_source
    x = volume(seed=2)
    with torch.no_grad():
        expected = swin(x, normalize=True)
        via_monai = reference.swinViT(x, normalize=True)
    assert_same_features(via_monai, expected)
    assert_same_features(nnssl_features(tmp_path / "out.pt", x), expected)
    # Export back to the release layout: MONAI's load_from reads it and computes the same features.
    convert_file(tmp_path / "out.pt", tmp_path / "back.pt", "nnssl", to="swinunetr-ssl")
    again = monai_swinunetr(LEGACY, out_channels=2).eval()
    again.load_from(torch.load(tmp_path / "back.pt", weights_only=True))
    with torch.no_grad():
        assert_same_features(again.swinViT(x, normalize=True), expected)


# ---------------------------------------------------------------------------------------------------------------
# SMIT: a small re-implementation of its Swin (models/Trans.py) with its key names
# ---------------------------------------------------------------------------------------------------------------

#: SMIT's PatchMerging concatenation: x0..x7 as (d, h, w) offsets, read from models/Trans.py.
SMIT_CONCAT = ((0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 0), (0, 1, 1), (1, 0, 1), (1, 1, 1))


def smit_relative_index(w: int) -> Tensor:
    coords = torch.stack(torch.meshgrid(*(torch.arange(w),) * 3, indexing="ij")).flatten(1)  # (3, w^3)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (w - 1)
    return rel[..., 0] * (2 * w - 1) ** 2 + rel[..., 1] * (2 * w - 1) + rel[..., 2]


def windows_of(x: Tensor, w: int) -> Tensor:
    """(B, D, H, W, C) -> (B * nW, w^3, C), windows in (d, h, w) raster order per sample."""
    b, d, h, ww, c = x.shape
    x = x.view(b, d // w, w, h // w, w, ww // w, w, c).permute(0, 1, 3, 5, 2, 4, 6, 7)
    return x.reshape(-1, w ** 3, c)


def from_windows(win: Tensor, w: int, shape: tuple) -> Tensor:
    b, d, h, ww, c = shape
    x = win.view(b, d // w, h // w, ww // w, w, w, w, c).permute(0, 1, 4, 2, 5, 3, 6, 7)
    return x.reshape(shape)


def smit_shift_mask(d: int, h: int, w_: int, w: int, s: int) -> Tensor:
    """SMIT BasicLayer's SW-MSA mask: region labels after the cyclic shift, -100 between different regions."""
    img = torch.zeros(1, d, h, w_, 1)
    regions = (slice(0, -w), slice(-w, -s), slice(-s, None))
    label = 0
    for a in regions:
        for b in regions:
            for c in regions:
                img[:, a, b, c] = label
                label += 1
    win = windows_of(img, w).squeeze(-1)  # (nW, N)
    diff = win.unsqueeze(1) - win.unsqueeze(2)
    return diff.masked_fill(diff != 0, -100.0).masked_fill(diff == 0, 0.0)


class SmitAttention(nn.Module):
    def __init__(self, dim: int, heads: int, w: int, qkv_bias: bool) -> None:
        super().__init__()
        self.heads = heads
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * w - 1) ** 3, heads))
        self.register_buffer("relative_position_index", smit_relative_index(w))
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        bw, n, c = x.shape
        q, k, v = self.qkv(x).reshape(bw, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        attn = (q * (c // self.heads) ** -0.5) @ k.transpose(-2, -1)
        bias = self.relative_position_bias_table[self.relative_position_index.reshape(-1)].reshape(n, n, -1)
        attn = attn + bias.permute(2, 0, 1).unsqueeze(0)
        if mask is not None:
            nw = mask.shape[0]
            attn = (attn.view(bw // nw, nw, self.heads, n, n) + mask[None, :, None]).view(bw, self.heads, n, n)
        return self.proj((attn.softmax(-1) @ v).transpose(1, 2).reshape(bw, n, c))


class SmitBlock(nn.Module):
    def __init__(self, dim: int, heads: int, w: int, shift: int, qkv_bias: bool) -> None:
        super().__init__()
        self.w, self.shift = w, shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = SmitAttention(dim, heads, w, qkv_bias)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Module()
        self.mlp.fc1, self.mlp.fc2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        h = self.norm1(x)
        if self.shift:
            h = torch.roll(h, shifts=(-self.shift,) * 3, dims=(1, 2, 3))
        h = from_windows(self.attn(windows_of(h, self.w), mask if self.shift else None), self.w, x.shape)
        if self.shift:
            h = torch.roll(h, shifts=(self.shift,) * 3, dims=(1, 2, 3))
        x = x + h
        return x + self.mlp.fc2(F.gelu(self.mlp.fc1(self.norm2(x))))


class SmitMerge(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.reduction = nn.Linear(8 * dim, 2 * dim, bias=False)  # pat_merg_rf = 4
        self.norm = nn.LayerNorm(8 * dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.reduction(self.norm(torch.cat([x[:, a::2, b::2, c::2] for a, b, c in SMIT_CONCAT], -1)))


class SmitStage(nn.Module):
    def __init__(self, dim: int, depth: int, heads: int, w: int, qkv_bias: bool) -> None:
        super().__init__()
        self.w = w
        self.blocks = nn.ModuleList(SmitBlock(dim, heads, w, 0 if i % 2 == 0 else w // 2, qkv_bias)
                                    for i in range(depth))
        self.downsample = SmitMerge(dim)


class SmitSwin(nn.Module):
    """SMIT's Swin (SwinTransformer_Unetr_* in models/Trans.py): same parameter names and computation.

    forward returns the features MONAI's SwinTransformer returns (patch embedding and every stage after its
    patch merging, layer-normalised without weights) so that both can be compared; SMIT's own norm0..3 outputs are
    taken before the merging and are not part of SwinUNETR.
    """

    def __init__(self, embed_dim: int, depths, heads, w: int, qkv_bias: bool, patch_norm: bool) -> None:
        super().__init__()
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv3d(1, embed_dim, 2, 2)
        self.patch_embed.norm = nn.LayerNorm(embed_dim) if patch_norm else None
        self.layers = nn.ModuleList(SmitStage(embed_dim * 2 ** i, depths[i], heads[i], w, qkv_bias) for i in range(4))
        for i in range(4):
            self.add_module(f"norm{i}", nn.LayerNorm(embed_dim * 2 ** i))

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.patch_embed.proj(x).permute(0, 2, 3, 4, 1)
        if self.patch_embed.norm is not None:
            x = self.patch_embed.norm(x)
        feats = [x]
        for stage in self.layers:
            mask = smit_shift_mask(*x.shape[1:4], stage.w, stage.w // 2)
            for block in stage.blocks:
                x = block(x, mask)
            x = stage.downsample(x)
            feats.append(x)
        return [F.layer_norm(f, f.shape[-1:]).permute(0, 4, 1, 2, 3) for f in feats]


# Window 2 on a 64^3 input keeps every stage larger than the window: MONAI (like the original Swin) turns the shift
# off for a stage no larger than its window, SMIT does not (documented in documentation/checkpoints.md).
SMIT_CFG = EncoderConfig(feature_size=12, depths=(2, 2, 2, 2), num_heads=(3, 3, 6, 6), window_size=2)


def smit_model(qkv_bias: bool, patch_norm: bool = False, seed: int = 4) -> SmitSwin:
    c = SMIT_CFG
    return randomize_(SmitSwin(c.feature_size, c.depths, c.num_heads, c.window_size, qkv_bias, patch_norm), seed)


@pytest.mark.parametrize("layout,qkv_bias", [("miccai2022", False), ("ibot_student", True)])
def test_smit_import_reproduces_smit_forward(tmp_path, layout, qkv_bias):
    smit = smit_model(qkv_bias)
    sd = smit.state_dict()
    if layout == "miccai2022":  # train_self_supervised.py: {'epoch', 'state_dict': model_S.transformer.state_dict()}
        payload = {"epoch": 1, "state_dict": sd, "optimizer": {}}
    else:  # SMIT-HeartSubSeg model_smit.pth: iBOT-style student/teacher with module.backbone.transformer.*
        full = {f"module.backbone.transformer.{k}": v for k, v in sd.items()}
        full["module.backbone.decoder1.weight"] = torch.zeros(3)
        payload = {"student": full, "teacher": {k: v + 1 for k, v in full.items()}, "epoch": 7}
    src = tmp_path / "smit.pth"
    torch.save(payload, src)
    report = convert_file(src, tmp_path / "out.pt", "smit")
    assert report.config == SMIT_CFG
    hows = " ".join(how for _, _, how in report.converted)
    assert "patch-merging" in hows and "fc1/fc2" in hows
    assert ("zero qkv bias" in hows) is (not qkv_bias)
    assert {"mask_token", "norm0.weight", "norm3.bias"} <= {k for k, _ in report.dropped}
    x = volume(64, seed=3)
    with torch.no_grad():
        expected = smit(x)
    assert_same_features(nnssl_features(tmp_path / "out.pt", x), expected)


def test_smit_merge_order_matters(tmp_path):
    """Guard on the test itself: copying SMIT's merging weights without the permutation changes the features."""
    smit = smit_model(qkv_bias=True)
    src = tmp_path / "smit.pth"
    torch.save({"state_dict": smit.state_dict()}, src)
    encoder_state, _, _ = load_source(src, "smit")
    naive = dict(encoder_state)
    for i in range(4):
        for part in ("reduction.weight", "norm.weight", "norm.bias"):
            naive[f"swinViT.layers{i + 1}.0.downsample.{part}"] = smit.state_dict()[f"layers.{i}.downsample.{part}"]
    encoder = SwinEncoder(SMIT_CFG).eval()
    encoder.load_state_dict(naive, strict=False)
    x = volume(64, seed=3)
    with torch.no_grad():
        got, expected = encoder(x), smit(x)
    assert not torch.allclose(got[1], expected[1], atol=1e-3)


def test_smit_patch_norm_is_refused_by_name_and_dropped_only_on_request(tmp_path):
    smit = smit_model(qkv_bias=False, patch_norm=True)
    src = tmp_path / "smit.pth"
    torch.save({"state_dict": smit.state_dict()}, src)
    with pytest.raises(ConversionError, match=r"patch_embed\.norm\.weight.*patch_norm=True"):
        convert_file(src, tmp_path / "out.pt", "smit")
    assert not (tmp_path / "out.pt").exists()
    report = convert_file(src, tmp_path / "out.pt", "smit", allow_inexact=True)
    assert report.inexact == ["patch_embed.norm.weight", "patch_embed.norm.bias"]
    prov = load_checkpoint(tmp_path / "out.pt")["provenance"]["imported_from"]
    assert prov["conversion"]["inexact"] == report.inexact


# ---------------------------------------------------------------------------------------------------------------
# VoCo, SuPreM, BrainSegFounder, the MONAI model-zoo bundle: the publishers' structures with their attribute names,
# imported, checked for full coverage and equal features, exported back and loaded the way the publisher's code does
# ---------------------------------------------------------------------------------------------------------------

def unetr_block(cin: int, cout: int) -> nn.Module:
    from monai.networks.blocks import UnetrBasicBlock

    return UnetrBasicBlock(spatial_dims=3, in_channels=cin, out_channels=cout, kernel_size=3, stride=1,
                           norm_name="instance", res_block=True)


class VoCoSwinLayout(nn.Module):
    """Large-Scale-Medical Self-supervised/models/voco_head.py ``Swin``: a SwinUNETR-v2 ``swinViT`` (MONAI 1.3.0, so
    the 0.9-1.4 merging) and SwinUNETR's encoder1-4 / encoder10 blocks."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        f = cfg.feature_size
        self.swinViT = monai_swin(cfg)
        self.encoder1 = unetr_block(cfg.in_channels, f)
        self.encoder2 = unetr_block(f, f)
        self.encoder3 = unetr_block(2 * f, 2 * f)
        self.encoder4 = unetr_block(4 * f, 4 * f)
        self.encoder10 = unetr_block(16 * f, 16 * f)


class ProjectionHead(nn.Module):
    """VoCo's projection_head: layer1, layer2 (Linear + parameter-free BatchNorm + ReLU), layer3 (Linear)."""

    def __init__(self, cin: int, hidden: int = 32, out: int = 32) -> None:
        super().__init__()
        bn = lambda: nn.BatchNorm1d(hidden, affine=False, track_running_stats=False)  # noqa: E731
        self.layer1 = nn.Sequential(nn.Linear(cin, hidden), bn(), nn.ReLU())
        self.layer2 = nn.Sequential(nn.Linear(hidden, hidden), bn(), nn.ReLU())
        self.layer3 = nn.Sequential(nn.Linear(hidden, out))


class VoCoHeadLayout(nn.Module):
    """Large-Scale-Medical ``VoCoHead``: backbone + student / teacher projection heads."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.backbone = VoCoSwinLayout(cfg)
        self.student = ProjectionHead(24 * cfg.feature_size)
        self.teacher = ProjectionHead(24 * cfg.feature_size)


def voco_like_load(net: nn.Module, model_dict: dict) -> int:
    """The authors' ``load`` (Large-Scale-Medical Downstream/monai/BTCV/models/models.py), re-written: wrapper, then
    module. / backbone. / swin_vit renames, then copy every tensor whose name and shape match. Returns the number
    of swinViT tensors copied."""
    for wrapper in ("state_dict", "network_weights", "net", "student"):
        if wrapper in model_dict:
            model_dict = model_dict[wrapper]
            break
    sd = {k.replace("module.", "").replace("backbone.", "").replace("swin_vit", "swinViT"): v
          for k, v in model_dict.items()}
    current = net.state_dict()
    new = {k: sd[k] if k in sd and sd[k].shape == current[k].shape else current[k] for k in current}
    net.load_state_dict(new, strict=True)
    return sum(1 for k in current if k.startswith("swinViT.") and k in sd and sd[k].shape == current[k].shape)


def test_voco_ssl_head_imports_exports_and_loads_in_the_authors_loader(tmp_path):
    model = randomize_(VoCoHeadLayout(V2_LEGACY), seed=21)
    src = tmp_path / "model_final_epoch.pt"
    # voco_train.py: {"epoch", "state_dict": model.state_dict(), "optimizer"} of a DistributedDataParallel model
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()},
                "optimizer": {}}, src)
    report = convert_file(src, tmp_path / "voco.pt", "voco", expected=EncoderConfig.preset("tiny").replace(
        depths=CFG.depths, num_heads=CFG.num_heads, use_v2=True))
    assert report.config == V2_LEGACY and "monai==1.3.0" in report.computation_source
    cov = report.coverage
    assert cov.full and cov.loaded_tensors == cov.encoder_tensors and cov.loaded_fraction == 1.0
    assert not report.unmappable and not report.unexpected
    dropped = {k for k, _ in report.dropped}
    assert {"encoder10.layer.conv1.conv.weight", "student.layer1.0.weight", "teacher.layer3.0.bias"} <= dropped
    x = volume(seed=6)
    with torch.no_grad():
        expected = model.backbone.swinViT(x, normalize=True)
    assert_same_features(nnssl_features(tmp_path / "voco.pt", x), expected)
    # Round trip: the exported file, read by the authors' own loader into their SwinUNETR-v2, gives the same encoder.
    convert_file(tmp_path / "voco.pt", tmp_path / "voco_export.pt", "nnssl", to="voco")
    target = monai_swinunetr(V2_LEGACY).eval()
    assert voco_like_load(target, torch.load(tmp_path / "voco_export.pt", weights_only=True)) == cov.encoder_tensors
    with torch.no_grad():
        assert_same_features(target.swinViT(x, normalize=True), expected)
    again = convert_file(tmp_path / "voco_export.pt", tmp_path / "voco2.pt", "voco")
    a, b = load_checkpoint(tmp_path / "voco.pt")["encoder"], load_checkpoint(tmp_path / "voco2.pt")["encoder"]
    assert again.coverage.full and a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_voco_released_wrappers_and_the_two_branch_cvpr_layout(tmp_path):
    swin = randomize_(monai_swinunetr(V2_LEGACY), seed=22)  # a VoComni-style full SwinUNETR-v2
    x = volume(seed=7)
    with torch.no_grad():
        expected = swin.swinViT(x, normalize=True)
    torch.save({"network_weights": {f"backbone.{k}": v for k, v in swin.state_dict().items()}}, tmp_path / "omni.pt")
    report = convert_file(tmp_path / "omni.pt", tmp_path / "o.pt", "voco")
    assert report.coverage.full and any(k.startswith("decoder5.") for k, _ in report.dropped)
    assert_same_features(nnssl_features(tmp_path / "o.pt", x), expected)
    # Luffy03/VoCo (CVPR 2024): two full Swin branches; refused until one is chosen with --prefix.
    student = randomize_(VoCoSwinLayout(V2_LEGACY), seed=23)
    teacher = randomize_(VoCoSwinLayout(V2_LEGACY), seed=24)
    sd = {**{f"student.{k}": v for k, v in student.state_dict().items()},
          **{f"teacher.{k}": v for k, v in teacher.state_dict().items()}}
    torch.save({"global_step": 1, "state_dict": {f"module.{k}": v for k, v in sd.items()}}, tmp_path / "cvpr.pt")
    with pytest.raises(ConversionError, match="two Swin encoders.*--prefix teacher"):
        convert_file(tmp_path / "cvpr.pt", tmp_path / "c.pt", "voco")
    report = convert_file(tmp_path / "cvpr.pt", tmp_path / "c.pt", "auto", prefix="teacher.")
    assert report.source_format == "voco" and report.coverage.full
    assert all(why == "outside --prefix teacher." for k, why in report.dropped if k.startswith("student."))
    with torch.no_grad():
        assert_same_features(nnssl_features(tmp_path / "c.pt", x), teacher.swinViT(x, normalize=True))


class SupremUniversalLayout(nn.Module):
    """SuPreM supervised_pretraining/backbone/Universal_model.py with backbone 'swinunetr' and word embeddings: its
    own SwinUNETR copy (the 0.9-1.4 merging) and the CLIP-driven heads (GroupNorm groups reduced for feature 12)."""

    def __init__(self, cfg: EncoderConfig, classes: int = 3) -> None:
        super().__init__()
        f = cfg.feature_size
        self.backbone = monai_swinunetr(cfg, out_channels=classes)
        self.precls_conv = nn.Sequential(nn.GroupNorm(4, f), nn.ReLU(), nn.Conv3d(f, 8, 1))
        self.GAP = nn.Sequential(nn.GroupNorm(4, 16 * f), nn.ReLU(), nn.AdaptiveAvgPool3d(1), nn.Conv3d(16 * f, 256, 1))
        self.controller = nn.Conv3d(512, 8 * 8 + 8 * 8 + 8 + 8 + 8 + 1, 1)
        self.register_buffer("organ_embedding", torch.randn(classes, 512))
        self.text_to_vision = nn.Linear(512, 256)


def suprem_like_load(net: nn.Module, model_dict: dict) -> int:
    """SuPreM target_applications/totalsegmentator/train.py (backbone 'swinunetr'), re-written: ['net'], drop the first
    key component, keep the keys whose next one is 'backbone' and that the network has."""
    store = net.state_dict()
    amount = 0
    for key, value in model_dict["net"].items():
        parts = key.split(".")[1:]
        if parts and parts[0] == "backbone" and ".".join(parts[1:]) in store:
            store[".".join(parts[1:])] = value
            amount += 1
    net.load_state_dict(store)
    return amount


def test_suprem_imports_exports_and_loads_in_the_authors_loader(tmp_path):
    model = randomize_(SupremUniversalLayout(LEGACY), seed=31)
    src = tmp_path / "supervised_suprem_swinunetr_2100.pth"
    # supervised_pretraining/train.py: {"net": model.state_dict(), "optimizer", "scheduler", "epoch"} under DDP
    torch.save({"net": {f"module.{k}": v for k, v in model.state_dict().items()}, "optimizer": {}, "scheduler": {},
                "epoch": 7}, src)
    report = convert_file(src, tmp_path / "suprem.pt", "auto", expected=CFG)
    assert report.source_format == "suprem" and "Universal Model heads" in report.detected
    assert report.config == LEGACY and report.coverage.full
    assert {"organ_embedding", "text_to_vision.weight", "controller.weight", "out.conv.conv.weight"} <= {
        k for k, _ in report.dropped}
    x = volume(seed=8)
    with torch.no_grad():
        expected = model.backbone.swinViT(x, normalize=True)
    assert_same_features(nnssl_features(tmp_path / "suprem.pt", x), expected)
    convert_file(tmp_path / "suprem.pt", tmp_path / "suprem_export.pth", "nnssl", to="suprem")
    target = monai_swinunetr(LEGACY).eval()
    loaded = suprem_like_load(target, torch.load(tmp_path / "suprem_export.pth", weights_only=True))
    assert loaded == report.coverage.encoder_tensors
    with torch.no_grad():
        assert_same_features(target.swinViT(x, normalize=True), expected)


class BrainSegFounderSSLHead(nn.Module):
    """lab-smile/BrainSegFounder pretrain/models/ssl_head.py SSLHead (upsample "vae"), two input channels (T1, T2)."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        dim = 16 * cfg.feature_size
        self.swinViT = monai_swin(cfg)
        self.rotation_pre = nn.Identity()
        self.rotation_head = nn.Linear(dim, 4)
        self.contrastive_pre = nn.Identity()
        self.contrastive_head = nn.Linear(dim, 512)
        layers: list[nn.Module] = []
        for cin, cout in ((dim, dim // 2), (dim // 2, dim // 4), (dim // 4, dim // 8), (dim // 8, dim // 16),
                          (dim // 16, dim // 16)):
            layers += [nn.Conv3d(cin, cout, 3, padding=1), nn.InstanceNorm3d(cout), nn.LeakyReLU(),
                       nn.Upsample(scale_factor=2, mode="trilinear", align_corners=False)]
        self.conv = nn.Sequential(*layers, nn.Conv3d(dim // 16, cfg.in_channels, 1))


def test_brainsegfounder_two_channels_imports_exports_and_loads_in_the_authors_loader(tmp_path):
    cfg = LEGACY.replace(in_channels=2)
    model = randomize_(BrainSegFounderSSLHead(cfg), seed=41)
    src = tmp_path / "model_bestValRMSE.pt"
    torch.save({"global_step": 9, "epoch": 2, "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()},
                "optimizer": {}}, src)
    report = convert_file(src, tmp_path / "bsf.pt", "auto")
    assert report.source_format == "brainsegfounder" and "two-channel" in report.detected
    assert report.config == cfg and report.coverage.full
    assert {"rotation_head.weight", "contrastive_head.bias", "conv.20.weight"} <= {k for k, _ in report.dropped}
    x = torch.randn(1, 2, 32, 32, 32, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        expected = model.swinViT(x, normalize=True)
    assert_same_features(nnssl_features(tmp_path / "bsf.pt", x), expected)
    # Export, then the BraTS fine-tuning script's rule: keys starting with module.swinViT. into model.swinViT.
    convert_file(tmp_path / "bsf.pt", tmp_path / "bsf_export.pt", "nnssl", to="brainsegfounder")
    exported = torch.load(tmp_path / "bsf_export.pt", weights_only=True)["state_dict"]
    target = monai_swin(cfg).eval()
    result = target.load_state_dict({k[len("module.swinViT."):]: v for k, v in exported.items()
                                     if k.startswith("module.swinViT.")}, strict=False)
    assert result.missing_keys == [] and result.unexpected_keys == []
    with torch.no_grad():
        assert_same_features(target(x, normalize=True), expected)


def write_btcv_bundle(root: Path, net: nn.Module) -> Path:
    """A swin_unetr_btcv_segmentation bundle folder: configs/metadata.json and models/model.pt (bare state dict, as
    MONAI's CheckpointSaver writes a single-object save_dict)."""
    (root / "configs").mkdir(parents=True)
    (root / "models").mkdir()
    (root / "configs" / "metadata.json").write_text(json.dumps({"name": "Swin UNETR BTCV segmentation",
                                                               "monai_version": "1.4.0", "version": "0.5.6"}))
    torch.save(net.state_dict(), root / "models" / "model.pt")
    return root / "models" / "model.pt"


def test_monai_bundle_is_recognised_in_its_folder_and_round_trips(tmp_path):
    net = randomize_(monai_swinunetr(LEGACY, out_channels=14), seed=51)
    model_pt = write_btcv_bundle(tmp_path / "swin_unetr_btcv_segmentation", net)
    report = convert_file(model_pt, tmp_path / "btcv.pt", "auto")
    assert report.source_format == "monai-bundle" and report.config == LEGACY and report.coverage.full
    x = volume(seed=10)
    with torch.no_grad():
        expected = net.swinViT(x, normalize=True)
    assert_same_features(nnssl_features(tmp_path / "btcv.pt", x), expected)
    # The same bytes outside the bundle folder: a plain SwinUNETR state dict, which several sources share.
    torch.save(net.state_dict(), tmp_path / "model_swin_unetr_btcv_segmentation_v1.pt")
    with pytest.raises(ConversionError, match="plain SwinUNETR state dict.*monai-bundle"):
        convert_file(tmp_path / "model_swin_unetr_btcv_segmentation_v1.pt", tmp_path / "x.pt", "auto")
    # Export for the bundle's MONAI (1.4: the legacy order) and load it as the bundle's CheckpointLoader does.
    convert_file(tmp_path / "btcv.pt", tmp_path / "bundle_export.pt", "nnssl", to="monai-bundle")
    target = monai_swinunetr(LEGACY, out_channels=14).eval()
    result = target.load_state_dict(torch.load(tmp_path / "bundle_export.pt", weights_only=True), strict=False)
    assert not [k for k in result.missing_keys if k.startswith("swinViT.")]
    with torch.no_grad():
        assert_same_features(target.swinViT(x, normalize=True), expected)


def test_export_to_current_monai_permutes_or_refuses_by_merge_order(tmp_path):
    """A legacy-order encoder cannot be written for MONAI >= 1.5 (its merging LayerNorm would see other sub-grids)
    but can for MONAI 0.9-1.4; an encoder in MONAI >= 1.5's order cannot be written for SuPreM's code, which runs the
    legacy order: both refused, nothing written."""
    encoder = randomize_(SwinEncoder(LEGACY), seed=61)
    save_checkpoint(tmp_path / "legacy.pt", {"method": "x", "encoder_config": LEGACY.to_dict(),
                                             "encoder": encoder.swin_state_dict()})
    with pytest.raises(ConversionError, match="not a rearrangement of the 'monai' order"):
        convert_file(tmp_path / "legacy.pt", tmp_path / "m.pt", "nnssl", to="monai", target_merging="monai")
    assert not (tmp_path / "m.pt").exists()
    report = convert_file(tmp_path / "legacy.pt", tmp_path / "m.pt", "nnssl", to="monai")
    assert "MONAI 0.9-1.4" in report.export_note
    current = randomize_(SwinEncoder(CFG), seed=62)
    save_checkpoint(tmp_path / "current.pt", {"method": "simmim", "encoder_config": CFG.to_dict(),
                                              "encoder": current.swin_state_dict()})
    assert convert_main([str(tmp_path / "current.pt"), str(tmp_path / "s.pth"), "--from", "nnssl", "--to",
                         "suprem"]) == 2
    assert not (tmp_path / "s.pth").exists()


def test_auto_recognises_each_layout_and_refuses_shared_ones(tmp_path):
    cases = {
        "swinunetr-ssl": release_layout(monai_swin(LEGACY), LEGACY),
        "voco": {"state_dict": VoCoHeadLayout(V2_LEGACY).state_dict()},
        "smit": {"state_dict": smit_model(False).state_dict()},
        "nnssl": None,
    }
    for name, payload in cases.items():
        path = tmp_path / f"{name}.pt"
        if payload is None:
            nnssl_checkpoint(path, CFG)
        else:
            torch.save(payload, path)
        encoder, report, _ = load_source(path, "auto", allow_inexact=name == "smit")
        assert report.source_format == name and report.detected
    with pytest.raises(ValueError, match="--prefix"):
        load_source(tmp_path / "nnssl.pt", "auto", prefix="teacher.")
    # One-channel SSLHead: research-contributions Pretrain and BrainSegFounder write the same layout.
    torch.save({"state_dict": {f"module.{k}": v for k, v in BrainSegFounderSSLHead(LEGACY).state_dict().items()}},
               tmp_path / "ssl1.pt")
    with pytest.raises(ConversionError, match="--from swinunetr-ssl.*--from brainsegfounder"):
        load_source(tmp_path / "ssl1.pt", "auto")
    assert load_source(tmp_path / "ssl1.pt", "brainsegfounder")[1].coverage.full


# ---------------------------------------------------------------------------------------------------------------
# Coverage: every source tensor is placed, dropped by name, or the conversion fails
# ---------------------------------------------------------------------------------------------------------------

def test_unrecognised_tensor_fails_until_dropped_by_name(tmp_path, capsys):
    sd = monai_swinunetr(LEGACY).state_dict()
    sd["extra_adapter.weight"] = torch.zeros(3, 3)
    sd["swinViT.layers5.0.blocks.0.norm1.weight"] = torch.ones(12)  # an encoder tensor nnssl does not build
    torch.save({"state_dict": sd}, tmp_path / "extra.pt")
    argv = [str(tmp_path / "extra.pt"), str(tmp_path / "o.pt"), "--from", "monai-swinunetr", "--merging",
            "monai-legacy"]
    assert convert_main(argv) == 2
    out, err = capsys.readouterr()
    assert "extra_adapter.weight" in err and "swinViT.layers5.0.blocks.0.norm1.weight" in err
    assert "--drop-unmappable" in err and "unmappable: 1" in out and "unexpected: 1" in out
    assert not (tmp_path / "o.pt").exists()
    assert convert_main(argv + ["--drop-unmappable"]) == 0
    out = capsys.readouterr().out
    assert "WARNING inexact: 2" in out and "INCOMPLETE" in out
    conversion = load_checkpoint(tmp_path / "o.pt")["provenance"]["imported_from"]["conversion"]
    assert sorted(conversion["inexact"]) == ["extra_adapter.weight", "swinViT.layers5.0.blocks.0.norm1.weight"]


def test_shape_conflict_fails_even_with_drop_unmappable(tmp_path):
    sd = monai_swinunetr(LEGACY).state_dict()
    sd["swinViT.layers1.0.blocks.1.attn.proj.weight"] = torch.zeros(12, 11)
    torch.save(sd, tmp_path / "bad.pt")
    with pytest.raises(ConversionError, match="proj.weight: checkpoint \\(12, 11\\)") as info:
        convert_file(tmp_path / "bad.pt", tmp_path / "o.pt", "monai-swinunetr", merging="monai-legacy",
                     allow_inexact=True)
    assert len(info.value.report.shape_conflicts) == 1 and not info.value.report.coverage.full


def test_coverage_counts_parameters_and_derived_tensors(tmp_path):
    smit = smit_model(qkv_bias=False)
    torch.save({"state_dict": smit.state_dict()}, tmp_path / "smit.pth")
    _, report, _ = load_source(tmp_path / "smit.pth", "smit")
    cov = report.coverage
    encoder = SwinEncoder(SMIT_CFG).swin_state_dict()
    learned = {k: v for k, v in encoder.items() if not k.endswith("relative_position_index")}
    assert cov.encoder_tensors == len(encoder) and cov.encoder_parameters == sum(v.numel() for v in learned.values())
    qkv_bias = [k for k in learned if k.endswith("attn.qkv.bias")]
    # qkv_bias=False: the zero biases and the index buffers are derived, everything else is read from the file
    assert cov.derived_parameters == sum(learned[k].numel() for k in qkv_bias)
    assert cov.loaded_parameters + cov.derived_parameters == cov.encoder_parameters and cov.full
    assert f"{100 * cov.loaded_fraction:.2f}%" in report.summary() and "FULL" in report.summary()


# ---------------------------------------------------------------------------------------------------------------
# Orientation: converted(T(x)) == T(original(x)) for the exact transform T, flips included
# ---------------------------------------------------------------------------------------------------------------

def write_nifti(path: Path, data, affine) -> Path:
    import nibabel as nib
    import numpy as np

    nib.save(nib.Nifti1Image(np.asarray(data, dtype=np.float32), np.asarray(affine, dtype=np.float64)), str(path))
    return path


#: NIfTI affines (voxel -> RAS mm) of differently stored images: LPS-like (the usual DICOM conversion), RAS, and
#: one with permuted voxel axes (i -> inferior, j -> left, k -> posterior).
AFFINES = {
    "lps": [[-1.5, 0, 0, 10], [0, -1.5, 0, 20], [0, 0, 2.0, -5], [0, 0, 0, 1]],
    "ras": [[0.8, 0, 0, 0], [0, 0.8, 0, 0], [0, 0, 1.2, 0], [0, 0, 0, 1]],
    "permuted": [[0, -1.0, 0, 0], [0, 0, -2.0, 0], [-1.5, 0, 0, 0], [0, 0, 0, 1]],
}


@pytest.mark.parametrize("name", list(AFFINES))
@pytest.mark.parametrize("transpose_forward", [(0, 1, 2), (2, 0, 1)])
def test_axis_codes_give_the_transform_between_monai_and_nnunet_arrays(tmp_path, name, transpose_forward):
    """The readers themselves: MONAI's LoadImage + Orientation(RAS) array A and nnU-Net's SimpleITK array B of the same
    file satisfy B == T(A) for T = axis_map_from_codes('RAS', nnunet_array_codes(direction, transpose_forward)); a
    pipeline without Orientation (SMIT's) gives the voxel axes, which nnU-Net reverses."""
    import SimpleITK as sitk
    from monai.transforms import LoadImage, Orientation

    data = torch.randn(6, 8, 10, generator=torch.Generator().manual_seed(1)).numpy()
    path = write_nifti(tmp_path / f"{name}.nii.gz", data, AFFINES[name])
    voxel = LoadImage(reader="NibabelReader", image_only=True, ensure_channel_first=True)(str(path))
    ras = Orientation(axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S")))(voxel)  # nibabel RAS+ labels
    itk = sitk.ReadImage(str(path))
    nnunet = torch.from_numpy(sitk.GetArrayFromImage(itk)).permute(*transpose_forward)[None, None]
    codes = nnunet_array_codes(itk.GetDirection(), transpose_forward)
    amap = axis_map_from_codes("RAS", codes)
    torch.testing.assert_close(amap.apply(torch.as_tensor(ras)[None].float()), nnunet.float())
    assert not amap.is_identity
    voxel_map = AxisMap(tuple(2 - t for t in transpose_forward), (False, False, False))
    torch.testing.assert_close(voxel_map.apply(torch.as_tensor(voxel)[None].float()), nnunet.float())
    inverse = amap.inverse()
    torch.testing.assert_close(inverse.apply(amap.apply(torch.as_tensor(ras)[None].float())),
                               torch.as_tensor(ras)[None].float())


ODD = EncoderConfig(feature_size=12, depths=(2, 2, 2, 2), num_heads=(3, 3, 6, 6), window_size=3,
                    merge_order="monai-legacy")
EVEN_V2 = EncoderConfig(feature_size=12, depths=(2, 2, 2, 2), num_heads=(3, 3, 6, 6), window_size=2, use_v2=True)


@pytest.mark.parametrize("cfg,size,codes", [
    (ODD, 96, "SPL"),      # odd window 3: flipped axes need the reversed shift; legacy merging gets a new order
    (EVEN_V2, 64, "PIR"),  # even window, SwinUNETR-v2 conv blocks, MONAI's merging kept by chunk permutation
], ids=["legacy-odd-window", "v2-even-window"])
def test_axis_map_reproduces_the_transformed_source_exactly(tmp_path, cfg, size, codes):
    source = randomize_(monai_swinunetr(cfg), seed=71)  # the published structure, not nnssl's encoder
    torch.save(source.state_dict(), tmp_path / "src.pt")
    order = "monai-legacy" if legacy(cfg) else "monai"
    report = convert_file(tmp_path / "src.pt", tmp_path / "oriented.pt", "monai-swinunetr", merging=order,
                          orientation=Orientation(to=codes, source_axes="RAS"))
    amap = axis_map_from_codes("RAS", codes)
    assert any(amap.flips) and amap.perm != (0, 1, 2)
    assert report.orientation["perm"] == list(amap.perm) and report.orientation["flips"] == list(amap.flips)
    x = volume(size, seed=12)
    with torch.no_grad():
        expected = [amap.apply(f) for f in source.swinViT(x, normalize=True)]
    got = nnssl_features(tmp_path / "oriented.pt", amap.apply(x))
    assert_same_features(got, expected)
    stored = EncoderConfig.from_dict(load_checkpoint(tmp_path / "oriented.pt")["encoder_config"])
    if cfg.window_size % 2:
        # Guard: the same weights with MONAI's shift on the flipped axes differ (the shift is part of the map).
        assert stored.window_shift is not None
        imported, imported_report, _ = load_source(tmp_path / "src.pt", "monai-swinunetr", merging=order)
        state, _, _ = orient_encoder(imported, imported_report.config, amap)
        plain = SwinEncoder(stored.replace(window_shift=None)).eval()
        plain.load_state_dict(state, strict=False)
        with torch.no_grad():
            wrong = plain(amap.apply(x))
        assert not torch.allclose(wrong[1], expected[1], atol=1e-3)
    else:
        assert stored.window_shift is None and stored.merge_order == MONAI_MERGE_ORDER
    # Guard: the unmapped weights on the transformed input are something else (the test can fail).
    with torch.no_grad():
        unmapped = source.swinViT(amap.apply(x), normalize=True)
    assert not torch.allclose(unmapped[0], expected[0], atol=1e-3)


def test_axis_map_is_exact_only_for_inputs_that_fill_the_windows(tmp_path):
    """The documented condition: with window 3, 96 (a multiple of 16 * 3 and 32) is exact (above); 64 leaves windows
    padded at the high end, which a flip moves to the other end."""
    source = randomize_(monai_swinunetr(ODD), seed=72)
    torch.save(source.state_dict(), tmp_path / "src.pt")
    convert_file(tmp_path / "src.pt", tmp_path / "o.pt", "monai-swinunetr", merging="monai-legacy",
                 orientation=Orientation(to="SPL", source_axes="RAS"))
    amap = axis_map_from_codes("RAS", "SPL")
    x = volume(64, seed=13)
    with torch.no_grad():
        expected = [amap.apply(f) for f in source.swinViT(x, normalize=True)]
    got = nnssl_features(tmp_path / "o.pt", amap.apply(x))
    torch.testing.assert_close(got[0], expected[0], atol=ATOL, rtol=RTOL)  # the patch embedding is exact anyway
    assert not torch.allclose(got[1], expected[1], atol=1e-3)


def test_cli_orients_like_a_dataset_and_records_it(tmp_path, capsys):
    swin = randomize_(monai_swin(LEGACY), seed=81)
    torch.save(release_layout(swin, LEGACY), tmp_path / "model_swinvit.pt")
    images = tmp_path / "imagesTr"
    images.mkdir()
    data = torch.zeros(4, 4, 4).numpy()
    for case in ("case_000_0000", "case_001_0000"):
        write_nifti(images / f"{case}.nii.gz", data, AFFINES["lps"])
    (tmp_path / "plans.json").write_text(json.dumps({"transpose_forward": [2, 0, 1]}))
    argv = [str(tmp_path / "model_swinvit.pt"), str(tmp_path / "o.pt"), "--from", "swinunetr-ssl", "--orient-like",
            str(images), "--plans", str(tmp_path / "plans.json")]
    assert convert_main(argv) == 0
    out = capsys.readouterr().out
    import SimpleITK as sitk

    codes = nnunet_array_codes(sitk.ReadImage(str(images / "case_000_0000.nii.gz")).GetDirection(), (2, 0, 1))
    assert f"orientation: RAS -> {codes}" in out and "exact for inputs whose every axis is a multiple of 64" in out
    ckpt = load_checkpoint(tmp_path / "o.pt")
    assert ckpt["provenance"]["imported_from"]["conversion"]["orientation"]["to"].startswith(codes)
    amap = axis_map_from_codes("RAS", codes)
    x = volume(64, seed=14)
    with torch.no_grad():
        expected = [amap.apply(f) for f in swin(x, normalize=True)]
    assert_same_features(nnssl_features(tmp_path / "o.pt", amap.apply(x)), expected)
    # A dataset stored in two orientations has no single axis map.
    write_nifti(images / "case_002_0000.nii.gz", data, AFFINES["ras"])
    assert convert_main(argv) == 2
    assert "2 orientations" in capsys.readouterr().err
    # SMIT trained on voxel axes: axis codes cannot describe them.
    torch.save({"state_dict": smit_model(True).state_dict()}, tmp_path / "smit.pth")
    assert convert_main([str(tmp_path / "smit.pth"), str(tmp_path / "s.pt"), "--from", "smit", "--orient-to",
                         "SPL"]) == 2
    assert "--orient-like" in capsys.readouterr().err


def test_oriented_odd_window_encoder_is_not_exported(tmp_path):
    source = randomize_(monai_swinunetr(ODD), seed=73)
    torch.save(source.state_dict(), tmp_path / "src.pt")
    convert_file(tmp_path / "src.pt", tmp_path / "o.pt", "monai-swinunetr", merging="monai-legacy",
                 orientation=Orientation(to="SPL", source_axes="RAS"))
    with pytest.raises(ConversionError, match="window_shift"):
        convert_file(tmp_path / "o.pt", tmp_path / "m.pt", "nnssl", to="monai")
    assert not (tmp_path / "m.pt").exists()


# ---------------------------------------------------------------------------------------------------------------
# Export, missing tensors, mismatches
# ---------------------------------------------------------------------------------------------------------------

def nnssl_checkpoint(path: Path, cfg: EncoderConfig, stored_cfg: EncoderConfig | None = None) -> SwinEncoder:
    encoder = randomize_(SwinEncoder(cfg), seed=6)
    save_checkpoint(path, {"method": "simmim", "encoder_config": (stored_cfg or cfg).to_dict(),
                           "encoder": encoder.swin_state_dict(), "task_state": {}, "step": 5})
    return encoder


def test_export_to_monai_loads_into_swinunetr_with_no_missing_encoder_key(tmp_path):
    from monai.networks.nets import SwinUNETR

    encoder = nnssl_checkpoint(tmp_path / "ckpt.pt", CFG)
    argv = [str(tmp_path / "ckpt.pt"), str(tmp_path / "monai.pt"), "--from", "nnssl", "--to", "monai"]
    assert convert_main(argv) == 0
    state = torch.load(tmp_path / "monai.pt", weights_only=True)
    net = SwinUNETR(in_channels=1, out_channels=2, depths=CFG.depths, num_heads=CFG.num_heads,
                    window_size=CFG.window_size, feature_size=CFG.feature_size).eval()
    result = net.load_state_dict(state, strict=False)
    assert [k for k in result.missing_keys if k.startswith("swinViT.")] == []
    assert result.unexpected_keys == []
    x = volume(seed=4)
    with torch.no_grad():
        assert_same_features(net.swinViT(x, normalize=True), encoder(x))


def test_missing_encoder_tensor_fails_and_is_reported(tmp_path, capsys):
    net = build_swinunetr(CFG, out_channels=2)
    sd = net.state_dict()
    gone = "swinViT.layers2.0.blocks.1.attn.proj.weight"
    del sd[gone]
    torch.save({"state_dict": sd}, tmp_path / "partial.pt")
    with pytest.raises(ConversionError, match=re.escape(gone)) as info:
        convert_file(tmp_path / "partial.pt", tmp_path / "out.pt", "monai-swinunetr", merging="monai")
    assert info.value.report.missing == [gone]
    assert not info.value.report.coverage.full
    code = convert_main([str(tmp_path / "partial.pt"), str(tmp_path / "out.pt"), "--from", "monai-swinunetr",
                         "--merging", "monai"])
    out, err = capsys.readouterr()
    assert code == 2 and not (tmp_path / "out.pt").exists()
    assert "missing:   1 encoder tensor(s)" in out and gone in out and err.startswith("error:")


def test_architecture_mismatch_names_the_setting(tmp_path, capsys):
    nnssl_checkpoint(tmp_path / "ckpt.pt", CFG)
    with pytest.raises(ArchitectureMismatchError, match="window_size: checkpoint 4, expected 7") as info:
        convert_file(tmp_path / "ckpt.pt", tmp_path / "o.pt", "nnssl", expected=EncoderConfig.preset("base"))
    assert "num_heads: checkpoint [3, 3, 6, 6], expected [3, 6, 12, 24]" in str(info.value)
    assert "feature_size: checkpoint 12, expected 48" in str(info.value)
    assert convert_main([str(tmp_path / "ckpt.pt"), str(tmp_path / "o.pt"), "--from", "nnssl",
                         "--expect-preset", "base"]) == 2
    assert "error: the checkpoint's encoder architecture differs" in capsys.readouterr().err
    # A checkpoint whose stored config disagrees with its own tensors is refused, naming the setting.
    nnssl_checkpoint(tmp_path / "bad.pt", CFG, stored_cfg=CFG.replace(window_size=7))
    with pytest.raises(ArchitectureMismatchError, match="window_size: checkpoint 4, expected 7"):
        convert_file(tmp_path / "bad.pt", tmp_path / "o.pt", "nnssl", to="monai")
    # At load time: the reason a network does not take the tensors, in settings.
    msg = explain_encoder_mismatch(build_swinunetr(CFG.replace(depths=(2, 2, 2, 2)), 2),
                                   SwinEncoder(CFG).swin_state_dict())
    assert msg.startswith("depths: checkpoint [2, 2, 4, 2], expected [2, 2, 2, 2]")


def test_wrong_format_gets_a_hint(tmp_path):
    torch.save({"state_dict": {f"module.{k}": v for k, v in monai_swin(CFG).state_dict().items()}}, tmp_path / "r.pt")
    with pytest.raises(ConversionError, match="--from swinunetr-ssl"):
        convert_file(tmp_path / "r.pt", tmp_path / "o.pt", "monai-swinunetr")
    with pytest.raises(ConversionError, match="not a SMIT checkpoint"):
        convert_file(tmp_path / "r.pt", tmp_path / "o.pt", "smit")


def test_cli_prints_the_load_report(tmp_path, capsys):
    torch.save(release_layout(monai_swin(CFG), CFG), tmp_path / "model_swinvit.pt")
    code = convert_main([str(tmp_path / "model_swinvit.pt"), str(tmp_path / "o.pt"), "--from", "swinunetr-ssl",
                         "--method", "swinunetr_public"])
    out = capsys.readouterr().out
    assert code == 0
    for part in ("matched:", "converted:", "dropped:", "missing:   0", "window_size=4", "num_heads=[3, 3, 6, 6]"):
        assert part in out
    assert load_checkpoint(tmp_path / "o.pt")["method"] == "swinunetr_public"
    assert convert_main([str(tmp_path / "nope.pt"), str(tmp_path / "o2.pt"), "--from", "smit"]) == 2
    assert "does not exist" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------------
# The commands in documentation/checkpoints.md run as written
# ---------------------------------------------------------------------------------------------------------------

def test_documented_commands_run(tmp_path, monkeypatch):
    doc = (REPO / "documentation" / "checkpoints.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```bash\n(.*?)```", doc, flags=re.S)
    commands = [line.strip() for b in blocks for line in b.splitlines() if line.strip().startswith("nnssl_convert ")]
    assert len(commands) >= 4
    base = EncoderConfig.preset("base")
    base_legacy = base.replace(merge_order="monai-legacy")

    def ddp(sd: dict) -> dict:
        return {f"module.{k}": v for k, v in sd.items()}

    fixtures = {  # the public files the page names, as small stand-ins of the same layout
        "model_swinvit.pt": lambda: release_layout(monai_swin(base_legacy), base_legacy),
        "swin_unetr_btcv.pt": lambda: {"state_dict": monai_swinunetr(LEGACY, 14).state_dict()},
        "pre_train_model.pt": lambda: {"epoch": 1, "state_dict": smit_model(False, patch_norm=True).state_dict()},
        "VoCo_B_SSL_head.pt": lambda: {"state_dict": ddp(VoCoHeadLayout(V2_LEGACY).state_dict())},
        "supervised_suprem_swinunetr_2100.pth": lambda: {"net": ddp(SupremUniversalLayout(LEGACY).state_dict())},
        "model_bestValRMSE.pt": lambda: {"state_dict": ddp(BrainSegFounderSSLHead(LEGACY.replace(in_channels=2))
                                                           .state_dict())},
    }
    monkeypatch.chdir(tmp_path)
    write_btcv_bundle(tmp_path / "swin_unetr_btcv_segmentation", monai_swinunetr(LEGACY, 14))
    (tmp_path / "imagesTr").mkdir()
    write_nifti(tmp_path / "imagesTr" / "case_000_0000.nii.gz", torch.zeros(4, 4, 4).numpy(), AFFINES["lps"])
    (tmp_path / "nnUNetSwinPlans.json").write_text(json.dumps({"transpose_forward": [0, 1, 2]}))
    for command in commands:
        argv = shlex.split(command)[1:]
        if argv[0] in fixtures and not Path(argv[0]).exists():
            torch.save(fixtures[argv[0]](), argv[0])
        assert Path(argv[0]).exists(), f"{command}: its input is neither a fixture nor made by an earlier command"
        assert convert_main(argv) == 0, command
    # The Python snippets run after the commands, in the same folder (they read the files the commands wrote).
    snippets = re.findall(r"```python\n(.*?)```", doc, flags=re.S)
    assert snippets
    for snippet in snippets:
        exec(compile(snippet, "documentation/checkpoints.md", "exec"), {})


# ---------------------------------------------------------------------------------------------------------------
# nnssl_attach and the fine-tuning loader accept an imported checkpoint
# ---------------------------------------------------------------------------------------------------------------

def test_imported_checkpoint_attaches_and_loads_for_fine_tuning(tmp_path, monkeypatch, capsys):
    import json

    from nnssl.cli.attach import main as attach_main
    from nnssl.finetune.network import build_network_from_configuration
    from nnssl.finetune.pretrained import load_pretrained_encoder

    monkeypatch.setenv("nnssl_results", str(tmp_path))  # the imported checkpoint lives in the nnssl results folder
    torch.save(release_layout(randomize_(monai_swin(LEGACY), seed=8), LEGACY), tmp_path / "model_swinvit.pt")
    assert convert_main([str(tmp_path / "model_swinvit.pt"), str(tmp_path / "ssl.pt"), "--from", "swinunetr-ssl"]) == 0
    assert "--name imported-swinunetr-ssl" in capsys.readouterr().out
    pre = tmp_path / "preprocessed"
    (pre / "Dataset901_Test").mkdir(parents=True)
    plans = {"plans_name": "nnUNetSwinPlans", "dataset_name": "Dataset901_Test", "nnssl_plans": True,
             "configurations": {"3d_fullres": {"patch_size": [64, 64, 64],
                                               "nnssl_encoder": EncoderConfig.preset("tiny").to_dict()}}}
    (pre / "Dataset901_Test" / "nnUNetSwinPlans.json").write_text(json.dumps(plans))
    monkeypatch.setenv("nnUNet_preprocessed", str(pre))
    ssl_ckpt = str(tmp_path / "ssl.pt")
    assert attach_main(["-d", "901", "--checkpoint", ssl_ckpt, "--name", "imported-swinunetr-ssl"]) == 0
    attached = json.loads((pre / "Dataset901_Test" / "nnUNetSwinPlans_imported-swinunetr-ssl.json").read_text())
    conf = attached["configurations"]["3d_fullres"]
    # The merge order the tensors do not show travels into the plans and builds the fine-tuning network.
    assert EncoderConfig.from_dict({**conf["nnssl_encoder"], "in_channels": 1}) == LEGACY
    network = build_network_from_configuration(conf, 2, 3)
    assert network.nnssl_encoder_config.merge_order == MONAI_LEGACY_MERGE_ORDER
    report = load_pretrained_encoder(network, conf, "Dataset901_Test", attached["plans_name"], in_channels=2,
                                     log=lambda _: None)
    assert report.missing == [] and report.adapted == ["swinViT.patch_embed.proj.weight"]
