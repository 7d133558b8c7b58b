"""Crack classifier library."""

from __future__ import annotations

from omegaconf import OmegaConf


def run_dir(resume: str | None, new: str) -> str:
    """The run directory: that of the run to resume (``resume=RUN_DIR``), else a new one."""
    return new if resume is None else resume


# Used in conf/train.yaml (hydra.run.dir); registered on import, so every entry point that
# imports crack can compose the configs.
OmegaConf.register_new_resolver("crack.run_dir", run_dir, replace=True)
