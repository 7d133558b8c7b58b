import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from crack.browser import find_chromium, rendered_dom, screenshot
from crack.field_report import write_evaluation_html, write_prediction_report
from crack.inference import Prediction
from crack.synthetic import make_image

needs_chromium = pytest.mark.skipif(
    find_chromium() is None,
    reason="no Chromium on PATH (Debian: apt-get install chromium; .ci/run installs it)",
)

CLASSES = ["Negative", "Positive"]


def photo_predictions(folder: Path) -> list[Prediction]:
    """Generated photos with given predictions: 3 cracked (1 unfamiliar), 3 intact, 1 tiled
    (with a heatmap), 1 unreadable."""
    rng = np.random.default_rng(0)
    results = []
    for name, probability, unfamiliar in [
        ("a/crack1.jpg", 0.91, False),
        ("a/crack2.jpg", 0.55, False),
        ("b/odd.jpg", 0.73, True),
        ("b/intact1.png", 0.04, False),
        ("intact2.jpg", 0.31, False),
        ("intact3.jpg", 0.12, False),
    ]:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        make_image(rng, 96, crack=probability >= 0.5).save(path)
        results.append(Prediction(path, probability, familiarity=0.5, unfamiliar=unfamiliar))
    large = folder / "large.jpg"
    make_image(rng, 400, crack=True).save(large)
    heatmap = folder.parent / "run" / "heatmaps" / "large.png"
    heatmap.parent.mkdir(parents=True)
    Image.new("RGB", (600, 300), "orange").save(heatmap)
    results.append(Prediction(large, 0.97, tiles=49, tile_fraction=0.2, heatmap=heatmap))
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    results.append(Prediction(folder / "broken.jpg", error="UnidentifiedImageError: nope"))
    return results


def card_names(page: str) -> list[str]:
    names = re.findall(r'<a class="name" href="[^"]*">(.*?)</a>', page)
    return [name.replace("<wbr>", "") for name in names]


def write_report(tmp_path: Path, **kwargs) -> tuple[Path, list[Prediction]]:
    results = photo_predictions(tmp_path / "photos")
    report = write_prediction_report(
        tmp_path / "run" / "report.html",
        results[::-1],  # the report sorts them itself
        0.5,
        CLASSES,
        tmp_path / "photos",
        {"input": str(tmp_path / "photos")},
        **kwargs,
    )
    return report, results


def test_report_has_a_card_per_photo_sorted_by_probability_and_is_self_contained(
    tmp_path, monkeypatch
):
    monkeypatch.setattr("crack.field_report.EAGER_CARDS", 3)
    report, _ = write_report(tmp_path)
    page = report.read_text()
    assert card_names(page) == [
        "large.jpg",
        "a/crack1.jpg",
        "b/odd.jpg",
        "a/crack2.jpg",
        "intact2.jpg",
        "intact3.jpg",
        "b/intact1.png",
        "broken.jpg",  # unreadable last
    ]
    assert "8 photos: 7 read, 1 could not be read." in page
    assert "4 of 7 show cracks (crack probability &gt;= 0.5)." in page
    assert "1 of 7 look unlike the training photos" in page
    assert "UnidentifiedImageError: nope" in page
    # Nothing to fetch: every image is embedded, no external script, style or font.
    assert not re.search(r'(src|href)="https?:', page) and "<link" not in page
    assert len(re.findall(r'<img src="data:image/jpeg;base64,', page)) == 7 + 1  # + heatmap
    assert 'href="heatmaps/large.png"' in page  # the full heatmap, relative to the report
    assert f'href="{(tmp_path / "photos" / "a" / "crack1.jpg").as_uri()}"' in page
    assert page.count('loading="lazy"') == 4  # the thumbnails after the first 3 cards
    assert not (report.parent / "report_files").exists()


def test_large_reports_write_the_thumbnails_next_to_the_page(tmp_path):
    report, _ = write_report(tmp_path, embed=False)
    page = report.read_text()
    sources = re.findall(r'<img src="([^"]+)"', page)
    assert len(sources) == 8 and all(s.startswith("report_files/") for s in sources)
    for source in sources:
        thumbnail = Image.open(report.parent / source)
        assert thumbnail.format == "JPEG" and max(thumbnail.size) <= 320


def shown_and_hidden(page: str) -> tuple[list[str], list[str]]:
    """Card names of the rendered DOM, split by whether the filter hid them."""
    shown, hidden = [], []
    for attributes, body in re.findall(r'<div class="card[^"]*"([^>]*)>(.*?)</div>\n', page):
        (name,) = card_names(body)
        (hidden if "hidden" in attributes else shown).append(name)
    return shown, hidden


@needs_chromium
def test_filters_change_what_the_browser_shows(tmp_path):
    report, _ = write_report(tmp_path)
    everything = card_names(report.read_text())
    expected = {
        "": everything,
        "cracked": ["large.jpg", "a/crack1.jpg", "b/odd.jpg", "a/crack2.jpg"],
        "intact": ["intact2.jpg", "intact3.jpg", "b/intact1.png"],
        "unfamiliar": ["b/odd.jpg"],
        "unreadable": ["broken.jpg"],
    }
    for fragment, names in expected.items():
        dom = rendered_dom(report, fragment)
        shown, hidden = shown_and_hidden(dom)
        assert shown == names, fragment
        assert sorted(shown + hidden) == sorted(everything)  # every card is in the page
        assert f'<span id="shown">{len(names)}</span>' in dom
        active = re.findall(r'<a href="#(\w+)" class="active">', dom)
        assert active == [fragment or "all"]


@needs_chromium
def test_report_renders_on_a_laptop_and_a_phone(tmp_path):
    report, _ = write_report(tmp_path)
    for width, height in (1280, 900), (390, 844):
        shot = Image.open(screenshot(report, tmp_path / f"{width}.png", width, height))
        assert shot.size == (width, height)
        pixels = np.asarray(shot.convert("L"), np.float32)
        # Drawn, not blank: text and thumbnails make the page far from uniform.
        assert pixels.std() > 20
        # No horizontal scrolling on the phone: the right-most column is page background.
        assert np.abs(pixels[:, -3:] - pixels[0, -3:].mean()).max() < 10


def test_evaluation_report_embeds_the_figures_and_the_worst_errors(tmp_path):
    rng = np.random.default_rng(1)
    paths = []
    for i in range(6):
        paths.append(tmp_path / "data" / f"{i}.png")
        paths[-1].parent.mkdir(exist_ok=True)
        make_image(rng, 64, crack=i < 3).save(paths[-1])
    labels = torch.tensor([1, 1, 1, 0, 0, 0])
    probs = torch.tensor([0.9, 0.2, 0.4, 0.1, 0.8, 0.3])  # FN: 1 (0.2), 2 (0.4); FP: 4
    run = tmp_path / "run"
    run.mkdir()
    for name in ("confusion_matrix", "roc_pr", "reliability"):
        Image.new("RGB", (40, 30), "blue").save(run / f"{name}.png")
    metrics = {"accuracy": 0.5, "num_images": 6, "confusion_matrix": [[2, 1], [2, 1]]}
    report = write_evaluation_html(run, paths, labels, probs, metrics, CLASSES, 0.5, 8, tmp_path)
    page = report.read_text()
    assert "<th>accuracy</th><td>0.5000</td>" in page and "<th>num_images</th><td>6</td>" in page
    assert page.count('<img src="data:image/png;base64,') == 3
    assert card_names(page) == ["data/4.png", "data/1.png", "data/2.png"]
    assert "true class Negative, predicted Positive" in page
    (run / "reliability.png").unlink()
    page = write_evaluation_html(run, paths, labels, probs, metrics, CLASSES, 0.5).read_text()
    assert page.count('<img src="data:image/png;base64,') == 2  # no reliability diagram yet
