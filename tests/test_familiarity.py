"""The unfamiliar-photo score: photos unlike the training ones are flagged, like ones are not."""

import numpy as np
import pytest
import torch
from PIL import Image
from torchmetrics.functional.classification import binary_auroc

from crack.checkpoint import load_trained_model
from crack.familiarity import (
    Familiarity,
    block_statistics,
    lognormal_percentile,
    unfamiliar_summary,
)
from crack.synthetic import make_image


def test_fit_puts_the_threshold_at_the_percentile_of_unseen_photos():
    generator = torch.Generator().manual_seed(0)
    train, val = torch.randn(400, 8, generator=generator), torch.randn(40, 8, generator=generator)
    familiarity = Familiarity(8)
    assert not familiarity.unfamiliar(familiarity(val * 100)).any()  # unfitted: flags nothing
    familiarity.fit(torch.cat([train, val]), percentile=95)
    new = torch.randn(4000, 8, generator=generator)  # more photos like the training ones
    # The scores of a Gaussian cloud have a lighter upper tail than the log-normal fitted to
    # them: its 95th percentile flags 2-3% of new photos here, not 5%.
    assert 0.015 < familiarity.unfamiliar(familiarity(new)).float().mean() < 0.08
    shifted = torch.randn(200, 8, generator=generator) + 3
    assert familiarity.unfamiliar(familiarity(shifted)).float().mean() > 0.95


def test_the_threshold_rests_on_every_photo_scored_by_a_fit_without_it():
    """Each photo is scored by a fit on the other folds (never by one that saw it), and the
    kept fit is the one on all photos."""
    generator = torch.Generator().manual_seed(1)
    photos = torch.randn(60, 3, generator=generator)
    familiarity = Familiarity(3)
    familiarity.fit(photos, percentile=90, folds=3)
    unseen = []
    for fold in range(3):
        alone = Familiarity(3)
        alone._fit_directions(torch.cat([photos[i::3] for i in range(3) if i != fold]))
        unseen.append(alone(photos[fold::3]))
    expected = lognormal_percentile(torch.cat(unseen), 90)
    torch.testing.assert_close(familiarity.threshold.double(), expected)
    kept = Familiarity(3)
    kept._fit_directions(photos)
    torch.testing.assert_close(familiarity(photos), kept(photos))


def test_the_lognormal_percentile_is_near_the_true_one_and_steadier_than_the_sample_one():
    generator = torch.Generator().manual_seed(2)
    # 200 draws of 500 scores from a log-normal (log-mean -0.2, log-std 0.3): its 99th
    # percentile is exp(-0.2 + 2.326 x 0.3) = 1.6445.
    scores = (torch.randn(200, 500, generator=generator, dtype=torch.float64) * 0.3 - 0.2).exp()
    true = float(np.exp(-0.2 + 2.3263479 * 0.3))
    fitted = torch.stack([lognormal_percentile(row, 99) for row in scores])
    sampled = torch.quantile(scores, 0.99, dim=1)
    assert abs(float(fitted.mean()) - true) < 0.01
    assert float(fitted.std()) < 0.75 * float(sampled.std())  # measured: 0.63
    assert lognormal_percentile(scores[0], 100) == float("inf")  # 100: nothing flagged
    assert float(lognormal_percentile(torch.tensor([0.7]), 99)) == pytest.approx(0.7)  # itself
    median = lognormal_percentile(torch.tensor([0.5, 2.0]), 50)  # the geometric mean
    torch.testing.assert_close(median, torch.tensor(1.0, dtype=torch.float64))


def _reference_scores(train: torch.Tensor, photos: torch.Tensor, components: int) -> torch.Tensor:
    """The score as the module docstring defines it, from an SVD of the centred rows."""
    train, photos = train.double(), photos.double()
    mean = train.mean(0)
    _, singular, directions = torch.linalg.svd(train - mean, full_matrices=False)
    variance = singular.square() / (len(train) - 1)
    keep = min(components, int((variance > 1e-12 * variance[0]).sum()))
    whitened = (photos - mean) @ (directions[:keep].T / variance[:keep].sqrt())
    return (whitened.square().sum(1) / keep).sqrt()


def test_the_fit_from_moments_scores_as_the_principal_directions_of_the_rows():
    """Fewer photos than dimensions (a rank-deficient cloud) far from the origin, as block
    statistics are: the covariance from summed moments must not turn rounding into directions."""
    generator = torch.Generator().manual_seed(2)
    rank12 = torch.randn(30, 12, generator=generator, dtype=torch.float64)
    train = rank12 @ torch.randn(12, 48, generator=generator, dtype=torch.float64) + 1000
    new = train[:5] + torch.randn(5, 48, generator=generator, dtype=torch.float64)
    familiarity = Familiarity(48, components=16)
    familiarity.fit(train, folds=3)
    torch.testing.assert_close(
        familiarity(new).double(), _reference_scores(train, new, 16), rtol=1e-4, atol=1e-4
    )
    assert int(familiarity.used) == 12  # the rank of the cloud, not a direction of rounding


def _described(model, images):
    with torch.inference_mode():
        return block_statistics(model.features, images, model.statistics_blocks)[1]


def _batch(trained, pictures):
    transform = trained.preprocessing.transform()
    return torch.stack([transform(p) for p in pictures])


def test_photos_unlike_the_training_photos_are_flagged(trained_checkpoint):
    """Fitted on synthetic concrete, the score flags red brick walls and colour noise, not new
    concrete photos."""
    trained = load_trained_model(trained_checkpoint)
    model = trained.model.eval()
    rng = np.random.default_rng(5)

    def concrete(n):
        return _batch(trained, [make_image(rng, 32, crack=i % 2 == 0) for i in range(n)])

    def bricks(n):
        pictures = []
        for _ in range(n):
            pixels = np.zeros((32, 32, 3), int)
            pixels[:] = (rng.integers(150, 200), rng.integers(40, 80), rng.integers(30, 60))
            pixels[::8] = 40  # mortar rows
            pixels[:, rng.integers(0, 8) :: 11] = 40  # and joints
            pixels += rng.integers(-20, 20, pixels.shape)
            pictures.append(Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)))
        return _batch(trained, pictures)

    def noise(n):
        return _batch(
            trained,
            [Image.fromarray(rng.integers(0, 256, (32, 32, 3), np.uint8)) for _ in range(n)],
        )

    model.familiarity.fit(_described(model, concrete(300)))
    scores = {name: model.familiarity(_described(model, make(100))) for name, make in
              (("concrete", concrete), ("bricks", bricks), ("noise", noise))}  # fmt: skip
    flagged = {
        name: float(model.familiarity.unfamiliar(s).float().mean()) for name, s in scores.items()
    }
    assert flagged["concrete"] <= 0.05, flagged
    # The tiny model trained here differs a little from one CPU to another (its kernels do), so
    # the flagged share carries some slack; the ranking must hold regardless.
    assert flagged["bricks"] >= 0.8 and flagged["noise"] >= 0.8, flagged
    for name in ("bricks", "noise"):  # AUROC: the share of (unlike, concrete) pairs ranked right
        unlike = torch.cat([scores[name], scores["concrete"]])
        is_unlike = torch.cat(
            [torch.ones(100, dtype=torch.long), torch.zeros(100, dtype=torch.long)]
        )
        auroc = binary_auroc(unlike, is_unlike)
        assert auroc >= 0.99, (name, float(auroc))

    # predict_step gives the same scores in one pass with the probabilities.
    images = bricks(4)
    probs, again = model.predict_step(images, 0)
    torch.testing.assert_close(again, model.familiarity(_described(model, images)))
    assert probs.shape == (4,)


def test_the_summary_line_counts_the_unfamiliar_photos_without_rounding_them_away():
    assert unfamiliar_summary(0, 40) == "None of the 40 photos looks unlike the training photos."
    assert unfamiliar_summary(1, 1000).startswith("1 of 1000 photos (0.1%) look unlike")
    assert unfamiliar_summary(153, 4400).startswith("153 of 4400 photos (3.5%) look unlike")
    assert unfamiliar_summary(8, 10).startswith("8 of 10 photos (80%) look unlike")
