"""Prediction on photos of any size, through PyTorch or ONNX Runtime.

Photos about the size the model was trained on are classified whole. Larger photos (a 4032x3024
phone photo) are scanned with overlapping tiles of the training size: the photo's crack
probability is its highest tile probability, and the tiles give a probability map for a heatmap.
Photos classified whole are decoded and preprocessed by worker threads while the network runs
(``workers``), so decoding does not stall it.
"""

from __future__ import annotations

import csv
import logging
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2

from crack.crackmap import grad_cam_map
from crack.errors import UserError
from crack.export import (
    FAMILIARITY_NAME,
    INPUT_NAME,
    OUTPUT_NAME,
    ProbabilityModel,
    parse_metadata,
)
from crack.familiarity import unfamiliar_summary
from crack.preprocessing import Preprocessing, load_rgb, open_image, to_rgb
from crack.report import heatmap_figure, save_figure
from crack.runtime import CPU_PASS_SIZE, ForwardRunner, in_passes

log = logging.getLogger(__name__)

# Probability maps are kept at most this many cells on the longer side: enough for a heatmap.
MAP_SIZE = 512
EXPORT = "python export.py ckpt=CHECKPOINT format=onnx"
BATCHES_AT_ONCE = 2  # through ONNX Runtime: see TorchClassifier


class Classifier(Protocol):
    """A model with the preprocessing it expects: images in, crack probabilities and
    unfamiliar-photo scores (`crack.familiarity`) out."""

    preprocessing: Preprocessing
    classes: list[str]  # by label: [intact, crack]
    threshold: float  # the default decision threshold: the operating point chosen in training
    familiarity_threshold: float  # photos scoring above it look unlike the training photos

    def __call__(self, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]: ...


class TorchClassifier:
    """A trained checkpoint, run on the CPU through `crack.runtime.ForwardRunner`.

    ``runtime`` and ``precision`` are the ``inference.*`` options: by default ONNX Runtime runs
    the network (exported in memory, the same probabilities within 1e-4, about 2.5x as fast),
    ``runtime="torch"`` runs it in PyTorch. ``model`` stays the PyTorch network either way:
    the Grad-CAM maps of tiled photos need its gradients. ``runtime_name`` says what runs;
    ``batches_at_once`` is how many batches `predict_files` may run at the same time.
    """

    def __init__(
        self,
        ckpt: str | Path,
        runtime: str = "auto",
        precision: str | int = "32",
        threads: int | None = None,
    ) -> None:
        from crack.checkpoint import load_trained_model  # the only backend that needs model code

        trained = load_trained_model(ckpt)
        self.model = ProbabilityModel.of(trained.model)
        self.preprocessing = trained.preprocessing
        self.classes = trained.classes
        self.threshold = float(trained.model.threshold)
        self.familiarity_threshold = float(trained.model.familiarity.threshold)
        size = self.preprocessing.image_size
        example = torch.zeros(2, 3, size, size)
        # ONNX Runtime: two batches at once, each on half the threads. One batch on all of them
        # loses time synchronising them: on 2 cores, 2 threads ran one batch at 1.73x the rate
        # of 1 thread, and two batches at once on 1 thread each 1.36x as fast as one on 2
        # (cores shared with other work). PyTorch gets one batch at a time: its threads serve
        # every caller.
        total = threads or torch.get_num_threads()
        half = max(1, total // BATCHES_AT_ONCE)
        self.runner = ForwardRunner(self.model, example, runtime, precision, "cpu", half)
        onnx = self.runner.session is not None and total >= BATCHES_AT_ONCE
        self.batches_at_once = BATCHES_AT_ONCE if onnx else 1
        self.runtime_name = self.runner.name

    def __call__(self, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        probs, scores = self.runner(images)
        return probs.numpy(), scores.numpy()


class OnnxClassifier:
    """A model exported by ``export.py format=onnx``, run with ONNX Runtime.

    The preprocessing, class names and threshold come from the file's metadata.
    """

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        import onnxruntime

        path = Path(path).expanduser()
        source = f"model={str(path)!r}"
        if not path.is_file():
            raise UserError(f"{source} does not exist: give an .onnx file written by {EXPORT}.")
        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = onnxruntime.InferenceSession(
                str(path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as error:  # onnxruntime's InvalidProtobuf, Fail, InvalidGraph, ...
            reason = " ".join(str(error).split())[:200]
            raise UserError(
                f"{source} is not an ONNX model ONNX Runtime can load ({reason}): give an "
                f".onnx file written by {EXPORT}."
            ) from error
        metadata = self.session.get_modelmeta().custom_metadata_map
        self.preprocessing, self.classes, self.threshold, self.familiarity_threshold = (
            parse_metadata(metadata, source)
        )
        self.runtime_name = "ONNX Runtime float32 (CPU)"
        outputs = [o.name for o in self.session.get_outputs()]
        # Files exported before familiarity existed have one output.
        self.outputs = (
            [OUTPUT_NAME, FAMILIARITY_NAME] if FAMILIARITY_NAME in outputs else [OUTPUT_NAME]
        )

    def __call__(self, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        # A few images per pass, as `ForwardRunner` runs them on a CPU (faster: see CPU_PASS_SIZE).
        results = in_passes(self._forward, images, CPU_PASS_SIZE["onnxruntime"])
        probs = results[0].numpy()
        return probs, results[1].numpy() if len(results) > 1 else np.zeros_like(probs)

    def _forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        inputs = {INPUT_NAME: images.contiguous().numpy()}
        return tuple(torch.from_numpy(y) for y in self.session.run(self.outputs, inputs))


@dataclass(frozen=True)
class Tiling:
    """When and how a large photo is scanned in tiles.

    Args:
        tile_size: tile side in pixels of the photo; None: the model's input size.
        stride: pixels between neighbouring tiles; None: half the tile size.
        min_scale: a photo is tiled when a side exceeds ``min_scale`` x tile size; smaller photos
            are classified whole (the reference dataset's 227 px photos are resized to 224).
    """

    tile_size: int | None = None
    stride: int | None = None
    min_scale: float = 1.5


def tile_positions(length: int, tile: int, stride: int) -> list[int]:
    """Tile starts along one side: every ``stride`` pixels, plus one flush with the far edge."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile + 1, stride))
    if starts[-1] != length - tile:
        starts.append(length - tile)
    return starts


def tile_boxes(width: int, height: int, tile: int, stride: int) -> list[tuple[int, int, int, int]]:
    """``(left, top, right, bottom)`` of overlapping tiles that cover the whole photo."""
    return [
        (left, top, min(left + tile, width), min(top + tile, height))
        for top in tile_positions(height, tile, stride)
        for left in tile_positions(width, tile, stride)
    ]


def probability_map(
    width: int, height: int, boxes: Sequence[tuple[int, int, int, int]], probs: np.ndarray
) -> np.ndarray:
    """Per-pixel mean probability of the tiles covering it, at most ``MAP_SIZE`` cells a side."""
    factor = max(1.0, max(width, height) / MAP_SIZE)
    rows, cols = round(height / factor), round(width / factor)
    total = np.zeros((rows, cols), np.float32)
    count = np.zeros((rows, cols), np.float32)
    for (left, top, right, bottom), p in zip(boxes, probs, strict=True):
        cells = np.s_[
            round(top / factor) : round(bottom / factor),
            round(left / factor) : round(right / factor),
        ]
        total[cells] += p
        count[cells] += 1
    return total / np.maximum(count, 1)


@dataclass
class Prediction:
    """The result for one file; ``error`` says why a file could not be read."""

    path: Path
    probability: float | None = None  # crack probability; the highest tile's for a tiled photo
    tiles: int = 0  # 0: classified whole
    tile_fraction: float | None = None  # fraction of tiles at or over the threshold
    familiarity: float | None = None  # how unlike the training photos (a tiled photo: mean tile)
    unfamiliar: bool | None = None  # familiarity over the model's familiarity threshold
    heatmap: Path | None = None
    error: str | None = None
    tile_probabilities: np.ndarray | None = field(default=None, repr=False)  # as `tile_boxes`
    probability_map: np.ndarray | None = field(default=None, repr=False)


def predict_tiles(
    classifier: Classifier, photo: Image.Image, tile: int, stride: int, batch_size: int
) -> tuple[list[tuple[int, int, int, int]], np.ndarray, np.ndarray]:
    """Tile boxes of ``photo`` and the crack probability and familiarity of each, in batches
    (``batches_at_once`` of them at a time, as in `predict_files`)."""
    pixels = v2.functional.pil_to_tensor(photo)  # uint8 (3, H, W); tiles are views into it
    transform = classifier.preprocessing.transform()
    boxes = tile_boxes(photo.width, photo.height, tile, stride)
    at_once = getattr(classifier, "batches_at_once", 1)

    def batch(start: int) -> torch.Tensor:
        chosen = boxes[start : start + batch_size]
        tiles = [pixels[:, top:bottom, left:right] for left, top, right, bottom in chosen]
        return transform(torch.stack(tiles))

    starts = range(0, len(boxes), batch_size)
    outputs = []
    with ThreadPoolExecutor(at_once, "network") as network:
        run = network.map if at_once > 1 else map
        # A group of batches at a time: a phone photo has about a thousand tiles, too many to
        # hold preprocessed at once.
        for group in range(0, len(starts), at_once):
            outputs += run(classifier, [batch(start) for start in starts[group : group + at_once]])
    probs = np.concatenate([tile_probs for tile_probs, _ in outputs])
    return boxes, probs, np.concatenate([tile_scores for _, tile_scores in outputs])


def _error_message(error: Exception) -> str:
    return f"{type(error).__name__}: {error}".replace("\n", " ")


@dataclass(frozen=True)
class WholeImageReader:
    """Reads one file for `predict_files`: ``(image, error)``.

    ``image`` is the preprocessed network input of a photo classified whole; None with no
    ``error`` for a photo to tile, whose pixels are decoded later, in the main process (only
    its header is read here).
    """

    transform: Callable[[Image.Image], torch.Tensor]
    max_side: float  # photos with a longer side are tiled

    def __call__(self, path: Path) -> tuple[torch.Tensor | None, str | None]:
        try:
            with open_image(path) as image:
                if max(image.size) > self.max_side:  # EXIF rotation swaps sides: same maximum
                    return None, None
                return self.transform(to_rgb(image)), None
        except Exception as error:  # PIL raises many kinds (OSError, SyntaxError, ...): go on
            return None, _error_message(error)


def read_in_order(paths: Sequence[Path], read: Callable, workers: int) -> Iterator:
    """``read(path)`` of every path, in order, by ``workers`` threads (0: here, one by one).

    Threads, not processes: decoding (Pillow, libjpeg-turbo) and resizing (torch) release the
    GIL, and a thread hands its image over without copying it between processes. On 2 busy cores
    DataLoader worker processes took 1.6x the CPU time per photo and were slower. At most
    ``4 x workers`` files are read ahead: results stream out, in bounded memory.
    """
    if workers == 0:
        yield from map(read, paths)
        return
    ahead: deque[Future] = deque()
    with ThreadPoolExecutor(workers, thread_name_prefix="read") as pool:
        try:
            for path in paths:
                ahead.append(pool.submit(read, path))
                if len(ahead) > 4 * workers:
                    yield ahead.popleft().result()
            while ahead:
                yield ahead.popleft().result()
        finally:  # the caller stopped early (an error while writing): drop the files read ahead
            for future in ahead:
                future.cancel()


def predict_files(
    classifier: Classifier,
    paths: Sequence[Path],
    threshold: float,
    batch_size: int = 32,
    tiling: Tiling = Tiling(),
    heatmap_dir: Path | None = None,
    root: Path | None = None,
    workers: int = 0,
) -> Iterator[Prediction]:
    """Predict every file, yielding each result, in the order of ``paths``, once it is known.

    Whole images are classified in batches across files, large photos tile by tile. A file that
    cannot be read gets a `Prediction` with its ``error``; the others go on. Heatmaps of tiled
    photos go to ``heatmap_dir`` (see `heatmap_path`). ``workers`` threads decode and preprocess
    the photos classified whole while the network runs (0: one by one, between batches). A
    classifier with ``batches_at_once`` > 1 gets that many batches at a time, from threads.
    """
    transform = classifier.preprocessing.transform()
    tile = tiling.tile_size or classifier.preprocessing.image_size
    stride = tiling.stride or max(1, tile // 2)
    reader = WholeImageReader(transform, tiling.min_scale * tile)
    # Results not yet sent to the network, in order; an image when it waits for its batch.
    waiting: list[tuple[Prediction, torch.Tensor | None]] = []
    # Batches sent and not yet yielded, oldest first: their results (True: with an image in the
    # batch) and the network's outputs (None: no image among them).
    running: deque[tuple[list[tuple[Prediction, bool]], Future | None]] = deque()
    at_once = getattr(classifier, "batches_at_once", 1)
    network = ThreadPoolExecutor(at_once, "network") if at_once > 1 else None

    def launch() -> None:
        images = [image for _, image in waiting if image is not None]
        outputs = None
        if images and network is not None:
            outputs = network.submit(classifier, torch.stack(images))
        elif images:
            outputs = Future()
            outputs.set_result(classifier(torch.stack(images)))
        running.append(([(result, image is not None) for result, image in waiting], outputs))
        waiting.clear()

    def finished(keep: int) -> Iterator[Prediction]:
        """Results of the oldest batches: all done ones, and more until ``keep`` run."""
        while running and (len(running) > keep or running[0][1] is None or running[0][1].done()):
            entries, outputs = running.popleft()
            if outputs is not None:
                probs, scores = outputs.result()
                batch = [result for result, has_image in entries if has_image]
                for result, prob, score in zip(batch, probs, scores, strict=True):
                    result.probability = float(prob)
                    result.familiarity = float(score)
                    result.unfamiliar = bool(score > classifier.familiarity_threshold)
            yield from (result for result, _ in entries)

    try:
        for path, (image, error) in zip(paths, read_in_order(paths, reader, workers), strict=True):
            result = Prediction(Path(path))
            if error is not None:
                result.error = error
                log.warning("Could not read %s: %s", result.path, result.error)
                waiting.append((result, None))
            elif image is not None:
                waiting.append((result, image))
                if sum(image is not None for _, image in waiting) == batch_size:
                    launch()
                    yield from finished(keep=at_once - 1)
            else:
                launch()
                yield from finished(keep=0)  # the results before this photo go first
                yield predict_tiled(
                    classifier, result, threshold, tile, stride, batch_size, heatmap_dir, root
                )
        launch()
        yield from finished(keep=0)
    finally:  # also when the caller stops early: no batch left running
        if network is not None:
            network.shutdown(cancel_futures=True)


def predict_tiled(
    classifier: Classifier,
    result: Prediction,
    threshold: float,
    tile: int,
    stride: int,
    batch_size: int,
    heatmap_dir: Path | None,
    root: Path | None,
) -> Prediction:
    """``result`` of a large photo, scanned in tiles (see `predict_files`), its heatmap written."""
    try:
        photo = load_rgb(result.path)
        boxes, probs, scores = predict_tiles(classifier, photo, tile, stride, batch_size)
    except Exception as error:  # e.g. a truncated photo that fails only when fully decoded
        result.error = _error_message(error)
        log.warning("Could not read %s: %s", result.path, result.error)
        return result
    result.probability = float(probs.max())
    result.familiarity = float(scores.mean())
    result.unfamiliar = bool(result.familiarity > classifier.familiarity_threshold)
    result.tiles = len(boxes)
    result.tile_fraction = float((probs >= threshold).mean())
    result.tile_probabilities = probs
    result.probability_map = probability_map(photo.width, photo.height, boxes, probs)
    if isinstance(classifier, TorchClassifier):  # finer: where in each tile (ONNX: no grads)
        transform = classifier.preprocessing.transform()
        result.probability_map = grad_cam_map(
            classifier.model, transform, photo, boxes, probs, result.probability_map.shape
        )
    if heatmap_dir is not None:
        result.heatmap = write_heatmap(result, photo, threshold, heatmap_dir, root)
    return result


def heatmap_path(path: Path, folder: Path, root: Path | None) -> Path:
    """Where the heatmap of ``path`` goes: ``folder/<path below root, extension kept>.png``.

    Keeping the subfolders and the extension keeps the names of different photos apart
    (``a/b.jpg`` and ``a__b.jpg``, ``wall.jpg`` and ``wall.png``).
    """
    relative = path.relative_to(root) if root else Path(path.name)
    return folder / relative.with_name(relative.name + ".png")


def write_heatmap(
    result: Prediction, photo: Image.Image, threshold: float, folder: Path, root: Path | None
) -> Path:
    """Write the heatmap overlay of a tiled photo to its `heatmap_path`."""
    path = heatmap_path(result.path, folder, root)
    warning = "UNFAMILIAR PHOTO, do not trust: " if result.unfamiliar else ""
    title = (
        f"{warning}{path.relative_to(folder).with_suffix('')}: highest tile probability "
        f"{result.probability:.3f}, {result.tile_fraction:.1%} of {result.tiles} tiles >= "
        f"{threshold:g}; cyan: map >= {threshold:g}"
    )
    figure = heatmap_figure(photo, result.probability_map, threshold, title)
    return save_figure(figure, path)


PREDICTION_COLUMNS = (
    "path", "probability", "label", "class", "familiarity", "unfamiliar", "tiles",
    "tile_fraction", "heatmap", "error",
)  # fmt: skip


def write_predictions(
    path: Path, results: Iterable[Prediction], threshold: float, classes: Sequence[str]
) -> list[Prediction]:
    """predictions.csv: path, crack probability, label (1 = crack), class, tiles, error.

    Each row is written and flushed as its result arrives, so whatever stops the run (a full
    disk, Ctrl-C) keeps every row computed before. Returns the results.
    """
    written = []
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(PREDICTION_COLUMNS)
        f.flush()
        for r in results:
            writer.writerow(_prediction_row(r, threshold, classes))
            f.flush()
            written.append(r)
    return written


def _prediction_row(r: Prediction, threshold: float, classes: Sequence[str]) -> list:
    readable = r.probability is not None
    label = int(r.probability >= threshold) if readable else None
    return [
        str(r.path),
        f"{r.probability:.6f}" if readable else "",
        "" if label is None else label,
        "" if label is None else classes[label],
        "" if r.familiarity is None else f"{r.familiarity:.4f}",
        "" if r.unfamiliar is None else int(r.unfamiliar),
        r.tiles if readable else "",
        "" if r.tile_fraction is None else f"{r.tile_fraction:.4f}",
        r.heatmap or "",
        r.error or "",
    ]


def summary(results: Sequence[Prediction], threshold: float, seconds: float) -> str:
    """How many files were read, tiled and found cracked, how many failed, and the speed."""
    read = [r for r in results if r.error is None]
    tiled = [r for r in read if r.tiles]
    cracked = [r for r in read if r.probability >= threshold]
    inputs = len(read) - len(tiled) + sum(r.tiles for r in tiled)
    lines = [
        f"{len(results)} files: {len(read)} read, {len(results) - len(read)} unreadable.",
        f"{len(cracked)} of {len(read)} images with cracks (crack probability >= {threshold:g}).",
        unfamiliar_summary(sum(bool(r.unfamiliar) for r in read), len(read)),
    ]
    if tiled:
        lines.append(
            f"{len(tiled)} large photos scanned in {sum(r.tiles for r in tiled)} tiles; "
            "per photo: highest tile probability, fraction of tiles over the threshold:"
        )
        lines += [f"  {r.path}: {r.probability:.3f}, {r.tile_fraction:.1%}" for r in tiled]
    lines.append(
        f"{inputs} network inputs (images and tiles) in {seconds:.1f} s, reading and heatmaps "
        f"included ({inputs / max(seconds, 1e-9):.1f} per s)."
    )
    return "\n".join(lines)
