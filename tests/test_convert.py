"""nnssl.convert / nnssl_convert: every source format is built from a freshly initialised model of that format's own
layout (no downloads), converted, loaded into nnssl's encoder, and must compute the same features as the source.

Source layouts reproduced here (from the authors' code, re-written for the test):
- MONAI SwinUNETR: the real class, saved with wrappers and ``module.`` prefixes;
- SwinUNETR self-supervised (Tang et al. 2022): research-contributions SwinUNETR/Pretrain ``models/ssl_head.py``
  attribute names (``swin_vit``, ``rotation_head``, ``contrastive_head``, ``conv``) and the ``model_swinvit.pt``
  release layout that MONAI's ``SwinUNETR.load_from`` reads (``module.layers1.0.blocks.0.mlp.fc1.weight``, ...);
- SMIT (The-Veeraraghavan-Lab/SMIT ``models/Trans.py``): a small re-implementation of its Swin with its key names,
  optional qkv bias and patch norm, and its patch-merging concatenation order.
"""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nnssl.checkpoint import load_checkpoint, load_encoder_into, save_checkpoint
from nnssl.cli.convert import main as convert_main
from nnssl.convert import convert_file, load_source
from nnssl.encoders.layout import explain_encoder_mismatch, infer_encoder_config, window_from_bias_table
from nnssl.errors import ArchitectureMismatchError, ConversionError
from nnssl.encoders.swin import EncoderConfig, SwinEncoder, build_swinunetr

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
ATOL, RTOL = 1e-5, 1e-4

# Non-default heads and depths, so that inference cannot pass by returning defaults.
CFG = EncoderConfig(feature_size=12, depths=(2, 2, 4, 2), num_heads=(3, 3, 6, 6), window_size=4)


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


def monai_swin(cfg: EncoderConfig) -> nn.Module:
    """MONAI SwinTransformer as SwinUNETR and the SSL head of Tang et al. build it."""
    from monai.networks.nets.swin_unetr import SwinTransformer

    return SwinTransformer(in_chans=cfg.in_channels, embed_dim=cfg.feature_size, window_size=(cfg.window_size,) * 3,
                           patch_size=(2, 2, 2), depths=cfg.depths, num_heads=cfg.num_heads, mlp_ratio=4.0,
                           qkv_bias=True, norm_layer=nn.LayerNorm, spatial_dims=3, use_v2=cfg.use_v2)


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
    report = convert_file(src, tmp_path / "out.pt", "monai-swinunetr")
    assert report.config == CFG and not report.missing
    assert len(report.matched) == len(SwinEncoder(CFG).swin_state_dict())
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


# ---------------------------------------------------------------------------------------------------------------
# SwinUNETR self-supervised (Tang et al. 2022)
# ---------------------------------------------------------------------------------------------------------------

class SSLHeadLayout(nn.Module):
    """Attribute names of research-contributions SwinUNETR/Pretrain/models/ssl_head.py (a small decoder)."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        dim = cfg.feature_size * 16
        self.swin_vit = monai_swin(cfg)
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
    model = randomize_(SSLHeadLayout(CFG), seed=2)
    src = tmp_path / "model_bestValRMSE.pt"
    # DistributedDataParallel in Pretrain/main.py adds "module."; the checkpoint dict is theirs.
    torch.save({"global_step": 10, "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()},
                "optimizer": {}}, src)
    report = convert_file(src, tmp_path / "out.pt", "swinunetr-ssl")
    dropped = {k for k, _ in report.dropped}
    assert {"rotation_head.weight", "contrastive_head.weight", "conv.0.weight"} <= dropped
    assert not report.missing and report.config == CFG
    x = volume(seed=1)
    with torch.no_grad():
        expected = model.swin_vit(x, normalize=True)
    assert_same_features(nnssl_features(tmp_path / "out.pt", x), expected)


def test_swinunetr_ssl_release_layout(tmp_path):
    from monai.networks.nets import SwinUNETR

    swin = randomize_(monai_swin(CFG), seed=3)
    release = release_layout(swin, CFG)
    # The fixture has the release's key layout: MONAI's own loader for model_swinvit.pt accepts it.
    reference = SwinUNETR(in_channels=1, out_channels=2, depths=CFG.depths, num_heads=CFG.num_heads,
                          window_size=CFG.window_size, feature_size=CFG.feature_size).eval()
    reference.load_from(release)
    src = tmp_path / "model_swinvit.pt"
    torch.save(release, src)
    report = convert_file(src, tmp_path / "out.pt", "swinunetr-ssl")
    renamed = [dst for _, dst, how in report.converted if "fc1/fc2" in how]
    assert len(renamed) == 4 * sum(CFG.depths)  # fc1/fc2 weight + bias per block
    assert {k for k, _ in report.dropped} == {"norm.weight", "norm.bias", "convTrans3d.weight", "convTrans3d.bias",
                                              "rotation_head.weight", "rotation_head.bias",
                                              "contrastive_head.weight", "contrastive_head.bias"}
    x = volume(seed=2)
    with torch.no_grad():
        expected = swin(x, normalize=True)
        via_monai = reference.swinViT(x, normalize=True)
    assert_same_features(via_monai, expected)
    assert_same_features(nnssl_features(tmp_path / "out.pt", x), expected)


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
        convert_file(tmp_path / "partial.pt", tmp_path / "out.pt", "monai-swinunetr")
    assert info.value.report.missing == [gone]
    code = convert_main([str(tmp_path / "partial.pt"), str(tmp_path / "out.pt"), "--from", "monai-swinunetr"])
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
    fixtures = {  # the public files the page names, as small stand-ins of the same layout
        "model_swinvit.pt": lambda: release_layout(monai_swin(base), base),
        "swin_unetr_btcv.pt": lambda: {"state_dict": build_swinunetr(CFG, 14).state_dict()},
        "pre_train_model.pt": lambda: {"epoch": 1, "state_dict": smit_model(False, patch_norm=True).state_dict()},
    }
    monkeypatch.chdir(tmp_path)
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
    torch.save(release_layout(randomize_(monai_swin(CFG), seed=8), CFG), tmp_path / "model_swinvit.pt")
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
    assert EncoderConfig.from_dict({**conf["nnssl_encoder"], "in_channels": 1}) == CFG
    network = build_network_from_configuration(conf, 2, 3)
    report = load_pretrained_encoder(network, conf, "Dataset901_Test", attached["plans_name"], in_channels=2,
                                     log=lambda _: None)
    assert report.missing == [] and report.adapted == ["swinViT.patch_embed.proj.weight"]
