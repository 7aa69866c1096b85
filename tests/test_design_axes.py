"""The design experiments as grid axes: pretraining.data_fractions (nested seeded subsets of the pretraining cases)
and pretraining.encoders (each preset pretrained and fine-tuned, with a from-scratch baseline of its own size)."""
from __future__ import annotations

import pytest

from nnssl.benchmark.runner import Paths, build_jobs
from nnssl.benchmark.spec import SpecError, spec_from_dict
from nnssl.encoders.swin import EncoderConfig
from nnssl.nnunet.naming import encoder_tag, scratch_method, variant_method

SPEC = {
    "name": "design",
    "device": "cpu",
    "pretraining": {"datasets": [900], "encoder": "tiny", "crop": 64, "steps": 5,
                    "options": {"smit": {"view_size": 32}}, "data_fractions": [0.25, 0.5, 1.0],
                    "encoders": ["tiny", "small"]},
    "methods": ["scratch", "smit"],
    "downstream": {"datasets": [901], "shots": ["5"], "folds": [0], "epochs": 2, "probe": False, "attention": False},
}


def _jobs(tmp_path, spec=None):
    return {j.key: j for j in build_jobs(spec_from_dict(spec or SPEC), Paths.under(tmp_path / "w"), tmp_path / "r")}


def _tag(preset: str) -> str:
    return encoder_tag({k: v for k, v in EncoderConfig.preset(preset).to_dict().items() if k != "in_channels"})


def test_variant_names():
    assert variant_method("smit") == "smit"
    assert variant_method("smit", "small", 0.25) == "smit-small-data25"
    assert variant_method("dino", None, 0.5) == "dino-data50"
    with pytest.raises(ValueError, match="whole percentage"):
        variant_method("smit", None, 0.125)


def test_every_method_is_pretrained_per_encoder_and_fraction_with_a_scratch_baseline_per_size(tmp_path):
    jobs = _jobs(tmp_path)
    pretrain = {k: j for k, j in jobs.items() if j.stage == "pretrain"}
    assert sorted(pretrain) == ["pretrain/smit", "pretrain/smit-data25", "pretrain/smit-data50", "pretrain/smit-small",
                                "pretrain/smit-small-data25", "pretrain/smit-small-data50"]
    cmd = pretrain["pretrain/smit-small-data25"].command
    assert cmd[cmd.index("-m") + 1] == "smit" and cmd[cmd.index("--encoder") + 1] == "small"
    assert cmd[cmd.index("--data-fraction") + 1] == "0.25" and "view_size=32" in cmd  # the method's options
    assert cmd[cmd.index("--output") + 1].endswith("design/smit-small-data25")
    assert "--data-fraction" not in pretrain["pretrain/smit-small"].command
    assert pretrain["pretrain/smit"].command[pretrain["pretrain/smit"].command.index("--encoder") + 1] == "tiny"
    # each variant is attached and fine-tuned as a method of its own
    tuned = {j.method for j in jobs.values() if j.stage == "finetune"}
    small = scratch_method(_tag("small"))
    assert tuned == {"scratch", small, "smit", "smit-data25", "smit-data50", "smit-small", "smit-small-data25",
                     "smit-small-data50"}
    # the small encoder's scratch baseline: its architecture from a small run, once that run exists
    attach = jobs[f"attach/{small}/901"]
    assert "--architecture-only" in attach.command and attach.after == ["pretrain/smit-small"]
    assert attach.command[attach.command.index("--checkpoint") + 1].endswith("design/smit-small/checkpoint_final.pth")
    assert jobs["attach/smit-small-data25/901"].after == ["pretrain/smit-small-data25"]


def test_without_the_axes_the_grid_is_unchanged(tmp_path):
    plain = {**SPEC, "pretraining": {k: v for k, v in SPEC["pretraining"].items()
                                     if k not in ("data_fractions", "encoders")}}
    jobs = _jobs(tmp_path, plain)
    assert [k for k in jobs if k.startswith("pretrain/")] == ["pretrain/smit"]
    assert {j.method for j in jobs.values() if j.stage == "finetune"} == {"scratch", "smit"}


def test_only_rules_name_the_method_of_a_variant(tmp_path):
    spec = {**SPEC, "downstream": {**SPEC["downstream"], "only": [{"methods": ["smit"]}]}}
    tuned = {j.method for j in _jobs(tmp_path, spec).values() if j.stage == "finetune"}
    assert tuned == {"smit", "smit-data25", "smit-data50", "smit-small", "smit-small-data25", "smit-small-data50"}


@pytest.mark.parametrize("change, message", [
    ({"data_fractions": [0.0, 1.0]}, r"data_fractions: 0.0 must be a share of the cases in \(0, 1\]"),
    ({"data_fractions": [1.5]}, "must be a share of the cases"),
    ({"data_fractions": [0.125]}, "in whole percent"),
    ({"data_fractions": [0.5, 0.5]}, "lists a fraction twice"),
    ({"data_fractions": []}, "must be a non-empty list"),
    ({"encoders": ["tiny", "huge"]}, "pretraining.encoders: unknown preset 'huge'"),
    ({"encoders": ["small", "small"]}, "lists a preset twice"),
])
def test_axis_errors_name_the_problem(change, message):
    with pytest.raises(SpecError, match=message):
        spec_from_dict({**SPEC, "pretraining": {**SPEC["pretraining"], **change}})


def test_a_variant_name_may_not_shadow_a_checkpoint():
    with pytest.raises(SpecError, match="'smit-data50' .* has the name of a method, checkpoint or baseline"):
        spec_from_dict({**SPEC, "methods": ["scratch", "smit", "smit-data50"],
                        "checkpoints": {"smit-data50": "/x/ckpt.pth"}})


# ---------------------------------------------------------------------------------------------------------------------
# the report's design-experiment tables and figures
# ---------------------------------------------------------------------------------------------------------------------
def test_report_plots_dice_against_pretraining_cases_and_encoder_size(tmp_path):
    import json

    from test_report import CT, CT_JSON, D, L, S, _run, _table

    from nnssl.analysis.report import ReportOptions, build_report
    from nnssl.analysis.results import load_results
    from nnssl.ledger import FINETUNE_RECORD

    root, raw = tmp_path / "results", tmp_path / "raw"
    (raw / CT).mkdir(parents=True)
    (raw / CT / "dataset.json").write_text(json.dumps(CT_JSON))
    runs = {  # method: (pretraining cases, fraction, encoder parameters, Dice added)
        "scratch": (None, None, 1000, 0.0), "scratch-small": (None, None, 4000, 0.01),
        "smit-data25": (2, 0.25, 1000, 0.02), "smit-data50": (4, 0.5, 1000, 0.03), "smit": (8, 1.0, 1000, 0.04),
        "smit-small": (8, 1.0, 4000, 0.05)}
    for m, (cases, fraction, params, add) in runs.items():
        kind = "Scratch" if m.startswith("scratch") else "SSL"
        plans = "nnUNetSwinPlans" + ("" if m == "scratch" else f"_{m}")
        fold = _run(root, CT, f"Swin{kind}Trainer__{plans}__3d_fullres", "0", {"1": L + add, "2": S + add})
        record = {"protocol": "full", "encoder_parameters": params}
        if cases is not None:
            record["pretraining"] = {"method": "smit", "pretraining_cases": cases, "data_fraction": fraction}
        (fold / FINETUNE_RECORD).write_text(json.dumps(record))
    report, paths = build_report(load_results(root, raw=raw, preprocessed=None), tmp_path / "o",
                                 ReportOptions(n_boot=200, seed=0))
    data = _table(report, f"{CT}, all cases: mean foreground Dice against the number of pretraining cases")
    assert [(r[1], r[2], r[3]) for r in data.rows] == [("smit-data25", "2", "25%"), ("smit-data50", "4", "50%"),
                                                       ("smit", "8", "100%")]  # smit-small: one amount, no series
    assert data.rows[0][0] == "smit (1,000 encoder parameters)" and data.rows[2][4].startswith("0.715 [")
    size = _table(report, f"{CT}, all cases: mean foreground Dice against the encoder's parameters")
    assert [(r[0], r[1], r[2]) for r in size.rows] == [("smit", "smit", "1,000"), ("smit", "smit-small", "4,000"),
                                                       ("scratch", "scratch", "1,000"),
                                                       ("scratch", "scratch-small", "4,000")]
    figures = sorted(p.name for p in (tmp_path / "o" / "figures").glob("design_*.png"))
    assert len(figures) == 2 and figures[0].startswith("design_cases_") and figures[1].startswith("design_params_")


def test_the_headline_count_of_a_spec_includes_the_design_runs_not_the_rungs_or_baselines():
    from nnssl.benchmark.budget import headline_comparisons

    spec = spec_from_dict({**SPEC, "baselines": ["nnunet"],
                           "downstream": {**SPEC["downstream"], "protocols": ["full", "frozen"]}})
    assert sorted(m for _, _, m in headline_comparisons(spec)) == [
        "smit", "smit-data25", "smit-data50", "smit-small", "smit-small-data25", "smit-small-data50"]
