"""Weights & Biases logging of a pretraining run, switched on as nnU-Net switches on its own.

nnU-Net 2.8 logs fine-tuning to W&B when ``nnUNet_wandb_enabled=1`` (``nnunetv2/training/logging/nnunet_logger.py``:
``MetaLogger._is_logger_enabled`` accepts 0/False/false and 1/True/true, ``WandbLogger`` reads
``nnUNet_wandb_project``, default "nnunet", and ``nnUNet_wandb_mode``, default "online", and logs into
``<output folder>/wandb``). ``nnssl_pretrain`` honours the same three variables and logs every record it writes to
``log.jsonl`` (losses, lr, weight decay, gradient norm, samples/s, the step anatomy ``ms/*`` and ``peak_mib``) at its
step, from rank 0. ``nnUNet_wandb_mode=offline`` writes the run under ``<run folder>/wandb`` with no network
(``wandb sync`` uploads it later).

A resumed run continues the same W&B run (its id is kept in ``<run folder>/wandb/nnssl_run_id``); records of steps
W&B already holds (logged after the checkpoint the run resumed from) are not sent again, as nnU-Net's logger does.
``wandb`` is an optional extra (``pip install wandb``): with the variable set and the package missing, the run stops
before reading any data with one error naming the install command.
"""
from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any, Mapping

from nnssl.nnunet.environment import WANDB_ENABLED as ENABLED, WANDB_MODE as MODE, WANDB_PROJECT as PROJECT

DEFAULT_PROJECT, DEFAULT_MODE = "nnunet", "online"
MODES = ("online", "offline", "disabled")
ID_FILE = "nnssl_run_id"


def wandb_enabled(env: Mapping[str, str] | None = None) -> bool:
    """Whether ``nnUNet_wandb_enabled`` asks for W&B (nnU-Net's values); ValueError for any other value."""
    value = str((os.environ if env is None else env).get(ENABLED, "0"))
    if value in ("0", "False", "false"):
        return False
    if value in ("1", "True", "true"):
        return True
    raise ValueError(f"{ENABLED}={value!r}: set it to 1 (log to Weights & Biases) or 0, as for nnU-Net")


def check_wandb(env: Mapping[str, str] | None = None) -> Any:
    """The ``wandb`` module when W&B logging is asked for (None when not); ValueError when it cannot work."""
    env = os.environ if env is None else env
    if not wandb_enabled(env):
        return None
    mode = env.get(MODE, DEFAULT_MODE)
    if mode not in MODES:
        raise ValueError(f"{MODE}={mode!r}: choose one of {', '.join(MODES)} (offline needs no network)")
    try:
        import wandb
    except ImportError:
        raise ValueError(f"{ENABLED}=1 but the wandb package is not installed: pip install wandb (or unset "
                         f"{ENABLED})") from None
    return wandb


class WandbRun:
    """One pretraining run's W&B run: ``start`` once the run's settings are known, ``log(record)`` per log.jsonl
    record, ``finish()`` at the end (also after a failure, with its exit code); nothing is sent before ``start``."""

    def __init__(self, wandb: Any, env: Mapping[str, str] | None = None) -> None:
        self.wandb, self.env = wandb, os.environ if env is None else env
        self.run: Any = None
        self.first_step = 0

    def start(self, out_dir: Path, resume: bool, config: dict[str, Any]) -> None:
        """Create ``<out_dir>/wandb``, take the run id kept there when resuming (else a new one, kept) and
        ``wandb.init`` with the project and mode from the environment and ``config`` plus the Slurm/LSF job id; a
        resumed run then skips the steps W&B already holds."""
        folder = Path(out_dir) / "wandb"
        folder.mkdir(parents=True, exist_ok=True)
        id_file = folder / ID_FILE
        run_id = id_file.read_text().strip() if resume and id_file.is_file() else uuid.uuid4().hex[:16]
        id_file.write_text(run_id + "\n")
        job = self.env.get("SLURM_JOB_ID") or self.env.get("LSB_JOBID")
        self.run = self.wandb.init(project=self.env.get(PROJECT, DEFAULT_PROJECT),
                                   mode=self.env.get(MODE, DEFAULT_MODE), dir=str(out_dir), id=run_id,
                                   resume="allow" if resume else "never", config={**config, "JobID": job})
        self.first_step = int(getattr(self.run, "step", 0) or 0) if resume else 0

    def log(self, record: Mapping[str, Any]) -> None:
        """Send a record's numeric values (not ``step``, not booleans) at its step; nothing before ``start``, for
        records without an int step or for steps W&B already holds."""
        step = record.get("step")
        if self.run is None or not isinstance(step, int) or step < self.first_step:
            return
        values = {k: v for k, v in record.items()
                  if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}
        if values:
            self.run.log(values, step=step)

    def finish(self, exit_code: int = 0) -> None:
        """Finish the W&B run with ``exit_code``; nothing when none is running."""
        if self.run is not None:
            self.run.finish(exit_code=exit_code)
            self.run = None


__all__ = ["DEFAULT_MODE", "DEFAULT_PROJECT", "ENABLED", "MODE", "PROJECT", "WandbRun", "check_wandb",
           "wandb_enabled"]
