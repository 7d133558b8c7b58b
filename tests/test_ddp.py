"""train.py on two CPU processes (DDP over gloo), end to end."""

from __future__ import annotations

import time

import torch
from helpers import printed_metrics, train

from crack.checkpoint import load_trained_model
from crack.data import ImageFileDataset
from crack.metrics import evaluation_metrics
from crack.synthetic import make_dataset


def test_two_processes_train_alike_and_validate_on_the_whole_validation_set(tmp_path):
    # 20 crack + 15 intact images split 0.7/0.2/0.1: 7 validation images, which two processes
    # cannot share evenly (Lightning's default sampler would pad one share with a repeat).
    data = make_dataset(tmp_path / "data", n_per_class=20, image_size=32, seed=3)
    for path in sorted((data / "Negative").iterdir())[15:]:
        path.unlink()
    parameters = tmp_path / "parameters"
    overrides = [
        "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "experiment=finetune",
        f"data.root={data}", "data.split=[0.7,0.2,0.1]", "data.image_size=32",
        "data.num_workers=0", "data.batch_size=3", "model.weights=null", "head_epochs=1",
        "trainer.max_epochs=2", f"hydra.run.dir={tmp_path / 'run'}",
        f"+callbacks.save_parameters={{_target_:tests.helpers.SaveParameters,folder:{parameters}}}",
    ]  # fmt: skip
    start = time.monotonic()
    stdout = train(*overrides)
    print(f"2-process DDP train.py run: {time.monotonic() - start:.1f} s")

    # Unfreezing at epoch 1 rewrapped DDP, so the unfrozen blocks' gradients were averaged too.
    rank0, rank1 = (torch.load(parameters / f"rank{r}.pt") for r in (0, 1))
    assert rank0.keys() == rank1.keys()
    for name, value in rank0.items():
        assert torch.equal(value, rank1[name]), name

    # Validation metrics of the best checkpoint: over all 7 images, as one process computes them.
    printed = printed_metrics(stdout, "val")
    trained = load_trained_model(tmp_path / "run" / "checkpoints" / "best.ckpt")
    val = [s for s in trained.samples if s.split == "val"]
    assert len(val) == 7 and printed["num_images"] == 7
    dataset = ImageFileDataset(trained.root, val, trained.preprocessing.transform())
    images = torch.stack([image for image, _ in dataset])
    labels = torch.tensor([s.label for s in val])
    with torch.no_grad():
        logits = trained.model(images)
    expected = evaluation_metrics(torch.sigmoid(logits), labels)
    for name in ("accuracy", "precision", "recall", "f1", "auroc"):
        assert abs(printed[name] - expected[name]) < 1e-4, name
    loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels.float())
    assert abs(printed["loss"] - loss.item()) < 1e-4
    assert printed_metrics(stdout, "test")["num_images"] == 4
    assert stdout.count("Validation metrics of the best checkpoint") == 1  # rank 0 only
