import csv

import numpy as np
import pytest
import torch
from PIL import Image

from crack.callbacks import Milestone
from crack.metrics import evaluation_metrics
from crack.report import (
    errors_figure,
    roc_pr_figure,
    save_figure,
    training_curves_figure,
    worst_errors,
    write_evaluation_report,
)
from crack.synthetic import make_image

PROBS = torch.tensor([0.9, 0.8, 0.3, 0.1, 0.6, 0.45])
LABELS = torch.tensor([1, 0, 1, 0, 0, 1])


def test_worst_errors_are_the_most_confident_mistakes_first():
    false_pos, false_neg = worst_errors(PROBS, LABELS, threshold=0.5, count=8)
    assert false_pos == [1, 4]  # intact images at 0.8, then 0.6
    assert false_neg == [2, 5]  # crack images at 0.3, then 0.45
    assert worst_errors(PROBS, LABELS, threshold=0.5, count=1) == ([1], [2])
    assert worst_errors(PROBS, LABELS, threshold=0.85, count=8) == ([], [2, 5])


def test_average_precision_in_metrics():
    metrics = evaluation_metrics(torch.tensor([0.9, 0.8, 0.3, 0.1]), torch.tensor([1, 0, 1, 0]))
    assert metrics["average_precision"] == pytest.approx((1 + 2 / 3) / 2)  # hits at ranks 1, 3
    only_cracks = evaluation_metrics(torch.tensor([0.9, 0.2]), torch.tensor([1, 1]))
    assert np.isnan(only_cracks["average_precision"]) and np.isnan(only_cracks["auroc"])


@pytest.fixture
def images(tmp_path):
    paths = []
    for i, label in enumerate(LABELS.tolist()):
        paths.append(tmp_path / "images" / f"{i:02d}.png")
        paths[-1].parent.mkdir(exist_ok=True)
        make_image(np.random.default_rng(i), 32, crack=bool(label)).save(paths[-1])
    return paths


def test_evaluation_report_files(images, tmp_path):
    metrics = evaluation_metrics(PROBS, LABELS)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    familiarity = torch.linspace(0, 2, len(LABELS))
    unfamiliar = familiarity > 1.5
    written = write_evaluation_report(
        run_dir, images, LABELS, PROBS, metrics, ["intact", "crack"], 0.5, familiarity, unfamiliar
    )
    names = {
        "predictions.csv",
        "confusion_matrix.png",
        "roc_pr.png",
        "reliability.png",
        "errors.png",
    }
    assert {p.name for p in written} == names
    for name in names - {"predictions.csv"}:
        assert Image.open(run_dir / name).format == "PNG"
    rows = list(csv.DictReader((run_dir / "predictions.csv").open()))
    assert [r["path"] for r in rows] == [str(p) for p in images]
    assert [int(r["label"]) for r in rows] == LABELS.tolist()
    assert [float(r["probability"]) for r in rows] == pytest.approx(PROBS.tolist())
    assert [int(r["predicted"]) for r in rows] == [1, 1, 0, 0, 1, 0]
    assert [int(r["unfamiliar"]) for r in rows] == unfamiliar.int().tolist()
    assert [float(r["familiarity"]) for r in rows] == pytest.approx(familiarity.tolist(), abs=1e-4)
    assert list(run_dir.glob("events.out.tfevents.*"))  # the figures, for TensorBoard


def test_errors_figure_titles_name_probability_and_file(images):
    figure = errors_figure(images, PROBS, LABELS, threshold=0.5, count=8, columns=4)
    titles = [ax.get_title() for section in figure.subfigs for ax in section.axes]
    assert [t for t in titles if t] == [
        "p=0.800\n01.png",
        "p=0.600\n04.png",
        "p=0.300\n02.png",
        "p=0.450\n05.png",
    ]
    no_errors = errors_figure(images, LABELS.float(), LABELS, threshold=0.5)
    texts = [t.get_text() for section in no_errors.subfigs for ax in section.axes for t in ax.texts]
    assert texts == ["none", "none"]


def test_roc_pr_figure_with_one_class_says_undefined(tmp_path):
    figure = roc_pr_figure(torch.tensor([0.2, 0.9]), torch.tensor([1, 1]), auroc=float("nan"))
    assert all("undefined" in ax.texts[0].get_text() for ax in figure.axes)
    assert Image.open(save_figure(figure, tmp_path / "roc.png")).format == "PNG"


def test_training_curves_mark_the_unfreeze_milestone(tmp_path):
    history = [
        {"epoch": e, "train/loss": 1 / (e + 1), "val/loss": 1.2 / (e + 1), "train/accuracy": 0.5}
        for e in range(4)
    ]
    figure = training_curves_figure(history, [Milestone(epoch=2, blocks=2)])
    loss_ax, accuracy_ax = figure.axes
    lines = {line.get_label(): line for line in loss_ax.get_lines()}
    assert list(lines["train loss"].get_xdata()) == [1, 2, 3, 4]  # epochs counted from 1
    # Unfrozen before the third epoch: between the second and third plotted points.
    assert list(lines["unfreeze last 2 blocks"].get_xdata()) == [2.5, 2.5]
    assert {line.get_label() for line in accuracy_ax.get_lines()} == {
        "train accuracy",
        "unfreeze last 2 blocks",
    }
    assert Image.open(save_figure(figure, tmp_path / "curves.png")).format == "PNG"
