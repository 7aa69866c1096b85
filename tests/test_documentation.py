"""Every ```bash block of the documentation runs as written (the docs cannot rot).

getting_started.md is a walkthrough: its blocks run in order in one workspace (phantoms, planning, pretraining,
attaching, fine-tuning, prediction, CKA, report). The other pages' blocks then run in that workspace. checkpoints.md
is executed by tests/test_convert.py with its stand-in checkpoints. Reference syntax that needs a GPU, a cluster or
your own data is written in ```text blocks.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "documentation"
WALKTHROUGH = "getting_started.md"
AFTER_WALKTHROUGH = ["nnunet_integration.md", "pretraining.md", "phantoms.md", "benchmark.md", "report.md"]
TESTED_ELSEWHERE = {"checkpoints.md": "tests/test_convert.py"}


def bash_blocks(page: str) -> list[str]:
    return re.findall(r"^```bash\n(.*?)^```", (DOCS / page).read_text(), flags=re.S | re.M)


def run_block(block: str, cwd: Path, env: dict[str, str]) -> None:
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, f"block failed:\n{block}\n--- output ---\n{(proc.stdout + proc.stderr)[-4000:]}"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    from nnssl.nnunet.environment import trainers_path

    root = tmp_path_factory.mktemp("docs")
    env = {**os.environ,
           "nnUNet_raw": str(root / "raw"), "nnUNet_preprocessed": str(root / "preprocessed"),
           "nnUNet_results": str(root / "results"), "nnssl_results": str(root / "nnssl_results"),
           "nnUNet_extTrainer": trainers_path(),
           # the CPU test knobs the walkthrough names
           "NNSSL_ITERATIONS_PER_EPOCH": "1", "NNSSL_VAL_ITERATIONS_PER_EPOCH": "1", "NNSSL_DISABLE_MIRRORING": "1",
           "nnUNet_n_proc_DA": "0", "nnUNet_def_n_proc": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "nnssl_results"):
        Path(env[key]).mkdir()
    for block in bash_blocks(WALKTHROUGH):
        run_block(block, root, env)
    return root, env


def test_walkthrough_produces_what_it_promises(workspace):
    root, _ = workspace
    fold = root / "results" / "Dataset901_PhantomCTOrgans" / "SwinSSLTrainer_1epochs__nnUNetSwinPlans_simmim__3d_fullres" / "fold_0"
    assert (fold / "validation" / "summary.json").is_file()
    log = "".join(p.read_text() for p in fold.glob("training_log_*.txt"))
    assert re.search(r"loaded (\d+)/\1 encoder tensors", log)
    assert len(list((root / "predictions").glob("*.nii.gz"))) == 8
    assert (root / "results" / "cka" / "901_simmim.json").is_file()
    assert "simmim" in (root / "report" / "report.md").read_text()


@pytest.mark.parametrize("page", AFTER_WALKTHROUGH)
def test_page_commands_run(workspace, page):
    root, env = workspace
    blocks = bash_blocks(page)
    assert blocks, f"{page} has no runnable example"
    for block in blocks:
        run_block(block, root, env)


def test_every_page_with_commands_is_tested():
    pages = {p.name for p in DOCS.rglob("*.md") if re.search(r"^```bash$", p.read_text(), flags=re.M)}
    assert pages <= {WALKTHROUGH, *AFTER_WALKTHROUGH, *TESTED_ELSEWHERE}, pages
