"""report.html: one page that shows a prediction or evaluation run to the people who took the photos.

The page is self-contained: thumbnails and figures are embedded as base64 data URIs and its
styles and script are inline, so it opens from disk or as an e-mail attachment with no network.
For large folders the thumbnails go into ``report_files/`` next to it instead (see
``EMBED_LIMIT``), because tens of megabytes of base64 make a page slow to open.
"""

from __future__ import annotations

import base64
import html
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import torch
from PIL import Image

from crack.atomic import atomic_write
from crack.inference import Prediction
from crack.preprocessing import open_image, to_rgb
from crack.report import worst_errors

THUMBNAIL_SIZE = 160  # pixels of the longer side: enough to see a crack, small enough for 10,000
HEATMAP_THUMBNAIL_SIZE = 320  # the heatmap figure holds the photo and the map side by side
JPEG_QUALITY = 70
# Up to this many photos, thumbnails are embedded (one file); above, they go into report_files/.
# Measured (benchmarks/report_build.py): 3.7 KB of HTML per embedded 160 px thumbnail, so
# 10,000 photos make a 37 MB page, which takes a browser about 10 s to open.
EMBED_LIMIT = 2000


@dataclass(frozen=True)
class Card:
    """One photo on the page: its name, link, thumbnail, the lines under it, its filter tags."""

    name: str  # the path below the input folder
    href: str  # link to the original file
    thumbnail: str | None  # image src; None for an unreadable file
    tags: tuple[str, ...]  # css classes the filters select on: cracked, intact, unfamiliar, ...
    lines: tuple[str, ...]  # plain text, escaped when written
    heatmap: tuple[str, str] | None = None  # (thumbnail src, href of the full PNG)
    error: str | None = None


class Thumbnails:
    """Makes small JPEG thumbnails and says where they are: embedded, or in a folder."""

    def __init__(self, report: Path, embed: bool) -> None:
        self.report = report
        self.embed = embed
        self.folder = report.parent / "report_files"
        self.count = 0

    def add(self, image: Image.Image, size: int = THUMBNAIL_SIZE) -> str:
        """The src of a thumbnail of ``image`` (a data URI, or a path relative to the report)."""
        image = image.copy()  # thumbnail() works in place; the caller's image stays as it was
        image.thumbnail((size, size))
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, "JPEG", quality=JPEG_QUALITY)
        if self.embed:
            return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
        self.folder.mkdir(parents=True, exist_ok=True)
        self.count += 1
        name = f"{self.count:06d}.jpg"
        (self.folder / name).write_bytes(buffer.getvalue())
        return f"{self.folder.name}/{name}"

    def of_file(self, path: Path, size: int = THUMBNAIL_SIZE) -> str | None:
        """The src of a thumbnail of the image file ``path``; None where it cannot be read."""
        try:
            with open_image(path) as image:
                # JPEG: decode at 1/2 to 1/8 scale, several times faster for phone photos.
                image.draft("RGB", (2 * size, 2 * size))
                return self.add(to_rgb(image), size)
        except Exception:  # PIL raises many kinds; the card then shows no thumbnail
            return None


def png_data_uri(path: Path) -> str:
    """A PNG file as a data URI (figures are embedded whatever the report's size)."""
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def relative_link(target: Path, report: Path) -> str:
    """A link from the report to ``target``: relative inside the run directory, else file://."""
    target = Path(target).resolve()
    folder = report.parent.resolve()
    if folder in target.parents:
        return Path(os.path.relpath(target, folder)).as_posix()
    return target.as_uri()


def name_below(path: Path, root: Path | None) -> str:
    """The path of a file below the input folder, as the user knows it."""
    try:
        return Path(path).relative_to(root).as_posix() if root else Path(path).name
    except ValueError:
        return Path(path).name


def prediction_card(
    result: Prediction,
    threshold: float,
    classes: Sequence[str],
    root: Path | None,
    report: Path,
    thumbnails: Thumbnails,
) -> Card:
    """The card of one predicted photo: probability, class, tiles, familiarity, or its error."""
    name, href = name_below(result.path, root), Path(result.path).resolve().as_uri()
    if result.error is not None:
        return Card(name, href, None, ("unreadable",), ("could not be read",), error=result.error)
    cracked = result.probability >= threshold
    tags = ["cracked" if cracked else "intact"]
    lines = [f"crack probability {result.probability:.3f}", f"class {classes[int(cracked)]}"]
    if result.tiles:
        lines.append(f"{result.tiles} tiles, {result.tile_fraction:.0%} >= {threshold:g}")
    if result.familiarity is not None:
        lines.append(f"familiarity {result.familiarity:.2f}")
    if result.unfamiliar:
        tags.append("unfamiliar")
        lines.append("unlike the training photos")
    heatmap = None
    if result.heatmap is not None and Path(result.heatmap).is_file():
        src = thumbnails.of_file(Path(result.heatmap), HEATMAP_THUMBNAIL_SIZE)
        heatmap = (src, relative_link(result.heatmap, report)) if src else None
    return Card(name, href, thumbnails.of_file(result.path), tuple(tags), tuple(lines), heatmap)


def by_probability(results: Sequence[Prediction]) -> list[Prediction]:
    """Highest crack probability first, unreadable files last (in their given order)."""
    return sorted(results, key=lambda r: (r.error is not None, -(r.probability or 0.0)))


def write_prediction_report(
    path: Path,
    results: Sequence[Prediction],
    threshold: float,
    classes: Sequence[str],
    root: Path | None = None,
    about: dict[str, str] | None = None,
    embed: bool | None = None,
) -> Path:
    """Write report.html of a predict.py run: a summary, filters, and one card per photo.

    ``about`` lines (input, model, ...) go under the title; ``embed`` None: embed thumbnails up
    to ``EMBED_LIMIT`` photos, else write them into ``report_files/``.
    """
    path = Path(path)
    thumbnails = Thumbnails(path, len(results) <= EMBED_LIMIT if embed is None else embed)
    cards = [
        prediction_card(r, threshold, classes, root, path, thumbnails)
        for r in by_probability(results)
    ]
    read = [r for r in results if r.error is None]
    cracked = sum(r.probability >= threshold for r in read)
    summary = [
        f"{len(results)} photos: {len(read)} read, {len(results) - len(read)} could not be read.",
        f"{cracked} of {len(read)} show cracks (crack probability >= {threshold:g}).",
    ]
    if any(r.unfamiliar is not None for r in read):
        unfamiliar = sum(bool(r.unfamiliar) for r in read)
        summary.append(f"{unfamiliar} of {len(read)} look unlike the training photos (unfamiliar).")
    filters = [("cracked", "cracked"), ("intact", "intact")]
    filters += [("unfamiliar", "unfamiliar"), ("unreadable", "unreadable")]
    page = render_page("Crack report", about or {}, summary, [], cards, filters)
    with atomic_write(path, encoding="utf-8") as f:
        f.write(page)
    return path


def write_evaluation_html(
    run_dir: Path,
    paths: Sequence[Path],
    labels: torch.Tensor,
    probs: torch.Tensor,
    metrics: dict,
    classes: Sequence[str],
    threshold: float,
    max_errors: int = 8,
    root: Path | None = None,
    about: dict[str, str] | None = None,
) -> Path:
    """Write report.html of an eval.py run: metrics, the figures in ``run_dir``, worst errors."""
    report = Path(run_dir) / "report.html"
    thumbnails = Thumbnails(report, embed=True)  # a few dozen error thumbnails at most
    false_pos, false_neg = worst_errors(probs, labels, threshold, max_errors)
    cards = []
    for indices, tag, truth in (
        (false_pos, "false-positive", 0),
        (false_neg, "false-negative", 1),
    ):
        for index in indices:
            path = Path(paths[index])
            lines = (
                f"crack probability {float(probs[index]):.3f}",
                f"true class {classes[truth]}, predicted {classes[1 - truth]}",
            )
            card = Card(
                name_below(path, root),
                path.resolve().as_uri(),
                thumbnails.of_file(path),
                (tag,),
                lines,
            )
            cards.append(card)
    rows = [(name, value) for name, value in metrics.items() if name != "confusion_matrix"]
    summary = [
        f"{metrics.get('num_images', len(labels))} images at threshold {threshold:g}.",
        f"Worst errors: {len(false_pos)} false positives (intact, highest crack probability "
        f"first) and {len(false_neg)} false negatives (crack, lowest first).",
    ]
    figures = [
        (name, png_data_uri(Path(run_dir) / f"{name}.png"))
        for name in ("confusion_matrix", "roc_pr", "reliability")
        if (Path(run_dir) / f"{name}.png").is_file()
    ]
    filters = [("false-positive", "false positives"), ("false-negative", "false negatives")]
    page = render_page(
        "Evaluation report", about or {}, summary, figures, cards, filters, metrics_table(rows)
    )
    with atomic_write(report, encoding="utf-8") as f:
        f.write(page)
    return report


def metrics_table(rows: Sequence[tuple[str, object]]) -> str:
    """An HTML table of metric names and values (floats with 4 decimals)."""
    cells = "".join(
        f"<tr><th>{html.escape(name)}</th><td>"
        f"{f'{value:.4f}' if isinstance(value, float) else html.escape(str(value))}</td></tr>"
        for name, value in rows
    )
    return f'<table class="metrics">{cells}</table>'


# The first cards load at once (lazy images on the first screen can be drawn blank, e.g. in
# a headless screenshot); the rest when scrolled to, so 10,000 cards open quickly.
EAGER_CARDS = 24


def card_html(card: Card, lazy: bool = True) -> str:
    """One card; the filters select on its classes."""
    name = html.escape(card.name)
    loading = ' loading="lazy"' if lazy else ""
    # Long paths wrap after a folder name rather than inside a word.
    shown_name = name.replace("/", "/<wbr>")
    image = (
        f'<img src="{card.thumbnail}" alt="{name}"{loading}>'
        if card.thumbnail
        else '<div class="missing">no image</div>'
    )
    parts = [f'<a class="photo" href="{html.escape(card.href)}">{image}</a>']
    parts.append(f'<a class="name" href="{html.escape(card.href)}">{shown_name}</a>')
    # The first line (the crack probability) is what a reader scans for: shown in bold.
    parts += [
        f"<div{' class=first' if i == 0 else ''}>{html.escape(line)}</div>"
        for i, line in enumerate(card.lines)
    ]
    if card.error:
        parts.append(f'<div class="error">{html.escape(card.error)}</div>')
    if card.heatmap:
        src, href = card.heatmap
        parts.append(
            f'<a class="heatmap" href="{html.escape(href)}">'
            f'<img src="{src}" alt="crack map of {name}"{loading}></a>'
        )
    return f'<div class="card {" ".join(card.tags)}">{"".join(parts)}</div>'


def render_page(
    title: str,
    about: dict[str, str],
    summary: Sequence[str],
    figures: Sequence[tuple[str, str]],
    cards: Sequence[Card],
    filters: Sequence[tuple[str, str]],
    table: str = "",
) -> str:
    """The whole page: header, summary, metrics table, figures, filter buttons, cards."""
    counts = {tag: sum(tag in c.tags for c in cards) for tag, _ in filters}
    buttons = [f'<a href="#all">all ({len(cards)})</a>']
    buttons += [
        f'<a href="#{tag}">{html.escape(label)} ({counts[tag]})</a>'
        for tag, label in filters
        if counts[tag]
    ]
    about_html = "".join(
        f"<div><b>{html.escape(k)}</b> {html.escape(str(v))}</div>" for k, v in about.items()
    )
    figures_html = "".join(
        f'<figure><img src="{src}" alt="{html.escape(name)}">'
        f"<figcaption>{html.escape(name.replace('_', ' '))}</figcaption></figure>"
        for name, src in figures
    )
    written = datetime.now().strftime("%Y-%m-%d %H:%M")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title>
<style>{STYLE}</style></head>
<body>
<header><h1>{html.escape(title)}</h1>{about_html}<div class="muted">written {written}</div></header>
<section class="summary">{"".join(f"<p>{html.escape(s)}</p>" for s in summary)}</section>
{table}
<section class="figures">{figures_html}</section>
<nav class="filters">{" ".join(buttons)} <span class="muted"><span id="shown">{len(cards)}</span> shown</span></nav>
<main class="grid">
{"".join(card_html(c, i >= EAGER_CARDS) + chr(10) for i, c in enumerate(cards))}</main>
<script>{SCRIPT}</script>
</body></html>
"""


STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;padding:12px;
 max-width:1400px;color:#222;background:#f6f6f4}
h1{font-size:1.4em;margin:0 0 4px}
header div{font-size:.9em;overflow-wrap:anywhere}
.muted{color:#777;font-size:.85em}
.summary{background:#fff;border-radius:8px;padding:4px 12px;margin:10px 0;font-size:1.05em}
.summary p{margin:6px 0}
table.metrics{border-collapse:collapse;background:#fff;margin:10px 0}
table.metrics th,table.metrics td{padding:3px 10px;border-bottom:1px solid #eee;text-align:left}
.figures{display:flex;flex-wrap:wrap;gap:10px}
.figures figure{margin:0;background:#fff;border-radius:8px;padding:6px;max-width:100%}
.figures img{max-width:100%;height:auto}
.filters{position:sticky;top:0;background:#f6f6f4;padding:8px 0;z-index:1}
.filters a{display:inline-block;margin:2px 4px 2px 0;padding:6px 12px;border-radius:16px;
 background:#fff;border:1px solid #bbb;color:#222;text-decoration:none;font-size:.95em}
.filters a.active{background:#222;color:#fff;border-color:#222}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(170px,1fr));gap:10px}
.card{background:#fff;border-radius:8px;padding:6px;font-size:.85em;border-top:4px solid #999;
 overflow-wrap:break-word}
.card[hidden]{display:none!important}
.card.cracked,.card.false-negative{border-top-color:#d62728}
.card.intact,.card.false-positive{border-top-color:#2ca02c}
.card.unfamiliar{outline:2px dashed #e69f00}
.card.unreadable{border-top-color:#555;background:#eee}
.card img{display:block;width:100%;height:auto;border-radius:4px}
.card .name{display:block;font-weight:600;margin:4px 0;color:#1f4e99}
.card .error{color:#a00}
.card .first{font-weight:600}
.card .missing{height:80px;display:flex;align-items:center;justify-content:center;color:#777}
.card .heatmap img{margin-top:4px}
@media (max-width:480px){.grid{grid-template-columns:repeat(2,1fr)}body{padding:6px}}
"""

# Filters by the URL's hash (#cracked, #intact, ...): works from disk, and a link can open a view.
SCRIPT = """
function applyFilter(){
 var f=location.hash.slice(1)||"all",shown=0;
 document.querySelectorAll(".card").forEach(function(c){
  var hide=!(f==="all"||c.classList.contains(f));c.hidden=hide;if(!hide)shown++;});
 document.querySelectorAll(".filters a").forEach(function(a){
  a.classList.toggle("active",a.getAttribute("href")==="#"+f);});
 document.getElementById("shown").textContent=shown;}
addEventListener("hashchange",applyFilter);applyFilter();
"""
