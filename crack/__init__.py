"""Crack classifier library."""

from __future__ import annotations

import os

from omegaconf import OmegaConf

from crack.rundir import new_run_dir, run_dir


def fastest_precision(accelerator: str, cpu_bf16: bool = False) -> str:
    """bf16 mixed precision on a CUDA GPU that supports it and, with ``cpu_bf16``, on a CPU with
    bfloat16 instructions (AVX512-BF16, AMX); else float32.

    On a CPU only what trains convolutions gains (experiment=finetune: steps 1.5x faster); a
    head alone gains nothing, so the experiments choose.
    """
    import torch

    from crack.runtime import bf16_native

    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return "bf16-mixed" if bf16_native(torch.device("cuda")) else "32-true"
    cpu = accelerator in ("auto", "cpu")
    return "bf16-mixed" if cpu_bf16 and cpu and bf16_native(torch.device("cpu")) else "32-true"


def usable_cpus(at_most: int) -> int:
    """The CPUs this process may run on, capped: a sensible number of DataLoader workers."""
    return min(at_most, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)


# Config defaults that depend on the machine (conf/trainer, conf/data): registered on import, so
# every entry point that imports crack can compose the configs.
OmegaConf.register_new_resolver("crack.precision", fastest_precision, replace=True)
OmegaConf.register_new_resolver("crack.cpus", usable_cpus, replace=True)


# Used in the configs' hydra.run.dir (conf/train.yaml: ``resume=`` or a new directory);
# registered on import, so every entry point that imports crack can compose the configs.
OmegaConf.register_new_resolver("crack.run_dir", run_dir, replace=True)
OmegaConf.register_new_resolver("crack.new_run_dir", new_run_dir, replace=True)


def progress_bar_class(enabled: bool) -> str:
    """The progress bar callback: ours (epochs from 1), or a no-op one where the trainer shows
    none (Lightning refuses a progress bar callback with ``trainer.enable_progress_bar=false``)."""
    return "crack.console.ProgressBar" if enabled else "lightning.pytorch.callbacks.Callback"


# Used in conf/callbacks/default.yaml (progress_bar).
OmegaConf.register_new_resolver("crack.progress_bar", progress_bar_class, replace=True)
