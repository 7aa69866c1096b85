"""Where the encoders attend: mean attention distance per stage and head, and attention inside the query's organ."""
from __future__ import annotations

import math
from collections import defaultdict
from typing import Any, Mapping, Sequence

import numpy as np

from nnssl.analysis import attention as att
from nnssl.analysis.report.blocks import Figure, Heading, Para, Table
from nnssl.analysis.report.context import ReportContext
from nnssl.analysis.report.format import fmt, pyplot, save_figure, slug

INTRO = (
    "Mean attention distance (Raghu et al. 2021, arXiv:2108.08810): per head, the attention-weighted distance between "
    "a query token and the key tokens, averaged over the queries, in mm (token spacing = image spacing x the stage's "
    "stride) and window-relative (every axis in units of the window's extent). Swin attends only within a window of "
    "w tokens per axis (MONAI's WindowAttention; the shifted blocks mask pairs across the roll), so the distance is "
    "bounded by the window diagonal, sqrt(3)(w-1) tokens, and its growth in mm with depth mostly reflects the growing "
    "token spacing; the window-relative value and the value under uniform attention over the same window (the "
    "'uniform' column) show whether a head looks near or far within what it can see. Localisation: the share of a "
    "query's attention on tokens of its own organ, averaged over the organ's tokens; 'uniform' is that share under "
    "uniform attention over the window (the organ's share of each query's window, not of the image). Crops of the "
    "fold's validation cases; labels on the token grid by majority vote; padded tokens left out.")


def _regime(shots: str) -> str:
    return "all cases" if shots == "all" else f"{shots}-shot"


def _stage_label(s: Mapping[str, Any]) -> str:
    return f"{s['name']} (stride {s['stride']})"


def _load(ctx: ReportContext) -> list[dict[str, Any]]:
    docs = []
    for path in ctx.attention_files:
        try:
            doc = att.read_attention_json(path)
        except ValueError as e:
            ctx.report.add(Para(f"Skipped {path.name}: {e}", note=True))
            ctx.report.warnings.append(str(e))
            continue
        doc["_path"] = path
        docs.append(doc)
    return docs


def _groups(ctx: ReportContext, docs: list[dict[str, Any]]) -> dict[tuple[str, str, str], dict[str, list]]:
    """(dataset, method, shots) -> {encoder: pooled stages, "_files": docs}: folds and draws pooled."""
    by_key: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for d in docs:
        by_key[(d["dataset"], d["method"], d["shots"])].append(d)
    out: dict[tuple[str, str, str], dict[str, list]] = {}
    for key in sorted(by_key, key=lambda k: (k[0], k[1], (0, 0) if k[2] == "all" else (1, int(k[2])))):
        files = by_key[key]
        try:
            pooled = {enc: att.pool_attention(files, enc) for enc in att.ENCODERS}
        except ValueError as e:
            ctx.report.add(Para(f"{key[0]}, {key[1]}, {_regime(key[2])}: {e}", note=True))
            continue
        out[key] = {**{k: v for k, v in pooled.items() if v}, "_files": files}
    return out


def _runs(files: Sequence[Mapping[str, Any]]) -> str:
    return ", ".join(sorted({f"{d['fold']}" + (f"/draw{d['draw']}" if d["draw"] else "") for d in files}))


def distance_figure(ctx: ReportContext, title: str, pooled: Mapping[str, list], path_stem: str) -> Figure:
    """Per encoder one heat map: stages (rows) x heads (columns), mean attention distance in mm."""
    plt = pyplot()
    encs = [e for e in att.ENCODERS if e in pooled]
    max_heads = max(s["heads"] for e in encs for s in pooled[e])
    mats = {}
    for e in encs:
        m = np.full((len(pooled[e]), max_heads), np.nan)
        for i, s in enumerate(pooled[e]):
            m[i, :s["heads"]] = s["distance_mm"]
        mats[e] = m
    finite = np.concatenate([m[np.isfinite(m)] for m in mats.values()])
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    # narrow panels: up to 24 heads (base encoder, last stage) must fit a page
    fig, axes = plt.subplots(1, len(encs), figsize=(min(7.0, 2.4 + 0.2 * max_heads) * len(encs) + 1.0, 3.0),
                             squeeze=False, layout="constrained")
    for ax, e in zip(axes[0], encs):
        m = mats[e]
        im = ax.imshow(np.ma.masked_invalid(m), cmap="viridis", vmin=vmin, vmax=vmax, aspect="auto")
        ax.set_yticks(range(m.shape[0]), [_stage_label(s) for s in pooled[e]], fontsize=7)
        ticks = range(0, max_heads, 1 if max_heads <= 12 else 4)
        ax.set_xticks(list(ticks), [str(h) for h in ticks], fontsize=7)
        ax.set_xlabel("head")
        ax.set_title(e, fontsize=9)
        if max_heads <= 12:
            for i in range(m.shape[0]):
                for j in range(max_heads):
                    if np.isfinite(m[i, j]):
                        ax.text(j, i, f"{m[i, j]:.0f}", ha="center", va="center", fontsize=6, color="white")
    fig.colorbar(im, ax=list(axes[0]), fraction=0.046, pad=0.02, label="mean attention distance (mm)")
    fig.suptitle(title, fontsize=9)
    p = save_figure(fig, ctx.fig_dir / f"attention_distance_{path_stem}.png")
    return Figure(p, f"{title}: mean attention distance (mm) per stage and head")


def fewshot_figure(ctx: ReportContext, ds: str, method: str, regimes: Mapping[str, Mapping[str, list]]) -> Figure:
    """Window-relative mean distance per stage: the pretrained encoder and the fine-tuned one of each regime."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.6, 3.4))
    pre = next((r["pretrained"] for r in regimes.values() if "pretrained" in r), None)
    if pre:
        ax.plot(range(len(pre)), [float(np.nanmean(s["distance_window"])) for s in pre], "o-", color="grey",
                label="pretrained", markersize=8, linewidth=3, alpha=0.6)
    for i, (shots, r) in enumerate(regimes.items()):
        if "fine-tuned" in r:
            st = r["fine-tuned"]
            # distinct markers and dashes: curves that coincide (little fine-tuning) stay visible
            ax.plot(range(len(st)), [float(np.nanmean(s["distance_window"])) for s in st],
                    marker="s^vD"[i % 4], linestyle=("--", ":", "-.")[i % 3], color=f"C{i}",
                    label=f"fine-tuned, {_regime(shots)}")
    stages = pre or next(r["fine-tuned"] for r in regimes.values() if "fine-tuned" in r)
    ax.set_xticks(range(len(stages)), [_stage_label(s) for s in stages], fontsize=7)
    ax.set_ylabel("mean distance (window-relative)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(f"{ds}, {method}: few-shot vs all cases", fontsize=9)
    fig.tight_layout()
    p = save_figure(fig, ctx.fig_dir / f"attention_fewshot_{slug(ds, method)}.png")
    return Figure(p, f"{ds}, {method}: mean attention distance (window-relative, mean over heads) per stage, "
                     "pretrained and fine-tuned per label regime")


def localisation_figure(ctx: ReportContext, title: str, pooled: Mapping[str, list], organs: Mapping[str, str],
                        path_stem: str) -> Figure | None:
    """Per organ: attention share inside the organ per stage, pretrained vs fine-tuned, uniform attention dashed."""
    encs = [e for e in att.ENCODERS if e in pooled]
    ids = sorted({o for e in encs for s in pooled[e] for o in s["localisation"]}, key=int)
    if not ids:
        return None
    plt = pyplot()
    cols = min(5, len(ids))  # a grid of panels: datasets with many organs stay page-wide
    rows = math.ceil(len(ids) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols + 0.6, 2.5 * rows + 0.5), squeeze=False, sharey=True)
    for ax in axes.flat[len(ids):]:
        ax.set_visible(False)
    width = 0.8 / len(encs)
    for ax, o in zip(axes.flat, ids):
        for j, e in enumerate(encs):
            vals = [s["localisation"].get(o, {}).get("attention", math.nan) for s in pooled[e]]
            ax.bar(np.arange(len(vals)) + (j - (len(encs) - 1) / 2) * width, vals, width=width, label=e,
                   color=("grey", "C0")[j % 2])
        uni = [pooled[encs[0]][i]["localisation"].get(o, {}).get("uniform", math.nan)
               for i in range(len(pooled[encs[0]]))]
        ax.plot(range(len(uni)), uni, "k_", markersize=18, markeredgewidth=2, label="uniform")
        ax.set_xticks(range(len(uni)), [s["name"] for s in pooled[encs[0]]], fontsize=7)
        ax.set_ylim(0, 1)
        ax.set_title(organs.get(o, f"label {o}"), fontsize=9)
    for row in axes:
        row[0].set_ylabel("attention inside organ", fontsize=8)
    axes.flat[0].legend(fontsize=6)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    p = save_figure(fig, ctx.fig_dir / f"attention_localisation_{path_stem}.png")
    return Figure(p, f"{title}: share of attention inside the query's organ per stage; the dash is uniform attention")


def attention(ctx: ReportContext) -> None:
    """Add the attention section: distance and localisation figures and tables per dataset, method, regime."""
    r, d = ctx.report, ctx.opt.digits
    r.add(Heading(2, "Attention"))
    if not ctx.attention_files:
        r.add(Para("No attention results found (expected `attention/*.json` in the results folder, written by "
                   "`nnssl_attention`).", note=True))
        return
    groups = _groups(ctx, _load(ctx))
    if not groups:
        return
    r.add(Para(INTRO))
    dist_rows, loc_rows, loc_stages = [], [], None
    for (ds, method, shots), g in groups.items():
        title = f"{ds}, {method}, {_regime(shots)}"
        stem = slug(ds, method, shots)
        pooled = {e: g[e] for e in att.ENCODERS if e in g}
        files = g["_files"]
        organs = {k: v for f in files for k, v in f.get("organs", {}).items()}
        r.add(Heading(3, title), distance_figure(ctx, title, pooled, stem))
        fig = localisation_figure(ctx, title, pooled, organs, stem)
        if fig is not None:
            r.add(fig)
        for e, stages in pooled.items():
            for s in stages:
                ci = ctx.ci(s["per_image_distance_mm"])
                mm = np.asarray(s["distance_mm"], dtype=float)
                dist_rows.append([
                    ds, method, _regime(shots), _runs(files), e, _stage_label(s),
                    "x".join(str(w) for w in s["window"]) + (
                        f" = {'x'.join(fmt(x, 0) for x in s['window_extent_mm'])} mm" if s.get("window_extent_mm")
                        else ""),
                    ci.fmt(1) if ci.n > 1 else fmt(float(np.nanmean(mm)), 1),
                    f"{np.nanmin(mm):.1f}-{np.nanmax(mm):.1f}" if np.isfinite(mm).any() else "n/a",
                    fmt(float(np.nanmean(s["distance_window"])), d), fmt(s["uniform_distance_window"], d),
                    fmt(s["padding_mass"], d)])
            ids = sorted({o for s in stages for o in s["localisation"]}, key=int)
            loc_stages = loc_stages or [_stage_label(s) for s in stages]
            for o in ids:
                cells = []
                for s in stages:
                    v = s["localisation"].get(o)
                    cells.append(f"{fmt(v['attention'], d)} ({fmt(v['uniform'], d)})" if v else "n/a")
                tokens = next((s["localisation"][o]["tokens"] for s in stages if o in s["localisation"]), 0)
                loc_rows.append([ds, method, _regime(shots), _runs(files), organs.get(o, f"label {o}"), e, *cells,
                                 str(tokens)])
    level = int(ctx.opt.level * 100)
    r.add(Table(["dataset", "method", "regime", "folds", "encoder", "stage", "window (tokens = extent)",
                 f"distance mm [{level}% CI over images]", "heads min-max mm", "window-relative",
                 "uniform, window-relative", "padding mass"], dist_rows,
                caption="Mean attention distance per stage (mean over blocks and heads; pooled over folds and "
                        "draws), absolute and window-relative; 'uniform' = uniform attention over the same window"))
    _fewshot(ctx, groups)
    if loc_rows:
        r.add(Table(["dataset", "method", "regime", "folds", "organ", "encoder", *loc_stages,
                     "query tokens (first stage)"], loc_rows,
                    caption="Attention localisation: per stage, the share of a query's attention on tokens of its "
                            "own organ (mean over the organ's tokens, blocks and heads), in brackets the same under "
                            "uniform attention (the organ's share of the query's window)"))
    else:
        r.add(Para("No localisation: the attention files hold no labelled organ tokens.", note=True))


def _fewshot(ctx: ReportContext, groups: Mapping[tuple[str, str, str], Mapping[str, list]]) -> None:
    r, d = ctx.report, ctx.opt.digits
    by_method: dict[tuple[str, str], dict[str, Mapping[str, list]]] = defaultdict(dict)
    for (ds, method, shots), g in groups.items():
        by_method[(ds, method)][shots] = g
    any_table = False
    for (ds, method), regimes in by_method.items():
        if "all" not in regimes or len(regimes) < 2 or "fine-tuned" not in regimes["all"]:
            continue
        few = [s for s in regimes if s != "all" and "fine-tuned" in regimes[s]]
        if not few:
            continue
        r.add(fewshot_figure(ctx, ds, method, {s: regimes[s] for s in ["all", *few]}))
        pre = next((g["pretrained"] for g in regimes.values() if "pretrained" in g), None)
        rows = []
        for i, s_all in enumerate(regimes["all"]["fine-tuned"]):
            row = [ds, method, _stage_label(s_all),
                   fmt(float(np.nanmean(pre[i]["distance_mm"])), 1) if pre else "n/a"]
            for k in few:
                s_k = regimes[k]["fine-tuned"][i]
                row.append(f"{fmt(float(np.nanmean(s_k['distance_mm'])), 1)}")
            row.append(fmt(float(np.nanmean(s_all["distance_mm"])), 1))
            for k in few:
                s_k = regimes[k]["fine-tuned"][i]
                row.append(fmt(float(np.nanmean(s_k["distance_window"]) - np.nanmean(s_all["distance_window"])), d))
            rows.append(row)
        header = (["dataset", "method", "stage", "pretrained mm"] + [f"fine-tuned {k}-shot mm" for k in few]
                  + ["fine-tuned all cases mm"] + [f"{k}-shot minus all (window-relative)" for k in few])
        r.add(Table(header, rows, caption=f"{ds}, {method}: mean attention distance, few-shot vs all-cases "
                                          "fine-tuning (mean over heads and blocks)"))
        any_table = True
    if not any_table:
        r.add(Para("Few-shot vs all cases needs attention results of the same dataset and method for a k-shot and an "
                   "all-cases fine-tuning; none found.", note=True))
