"""Shared pieces of the experiments: file lists, splits, the backbone, the head and training.

Everything works on activations stored by ``extract.py`` (the input of ``features[15]``, computed
once per image with the frozen prefix in eval mode), so that stage 2 trains only the last k <= 4
blocks plus the head.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import re
from pathlib import Path

import numpy as np
import torch
import torchvision
from torch import nn

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
FIRST_STORED = 15  # the stored activation is the input of features[15]
POSITIVE = {"Positive", "crack"}
NEGATIVE = {"Negative", "no_crack"}
PHOTO_RE = re.compile(r"^(\d+)-")


def list_images(root: str | Path) -> tuple[list[Path], np.ndarray]:
    """All JPEGs under the class folders of ``root``, sorted; label 1 = crack."""
    root = Path(root)
    paths, labels = [], []
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        if d.name in POSITIVE:
            y = 1
        elif d.name in NEGATIVE:
            y = 0
        else:
            continue
        for p in sorted(d.glob("*.jpg")):
            paths.append(p)
            labels.append(y)
    return paths, np.array(labels, dtype=np.int64)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def metu_split(
    paths: list[Path], labels: np.ndarray, seed: int = 0, n_train=300, n_val=100, n_test=500
) -> dict[str, np.ndarray]:
    """Indices of train/val/test (per class counts) and 'rest', after SHA-256 deduplication.

    Only the first file of each content hash is kept; a hash seen in both classes is dropped.
    """
    first: dict[str, int] = {}
    classes: dict[str, set] = {}
    for i, p in enumerate(paths):
        h = sha256(p)
        first.setdefault(h, i)
        classes.setdefault(h, set()).add(int(labels[i]))
    keep = np.array(sorted(i for h, i in first.items() if len(classes[h]) == 1))
    rng = np.random.default_rng(seed)
    out: dict[str, list] = {"train": [], "val": [], "test": [], "rest": []}
    for y in (0, 1):
        idx = rng.permutation(keep[labels[keep] == y])
        a, b, c = n_train, n_train + n_val, n_train + n_val + n_test
        out["train"] += list(idx[:a])
        out["val"] += list(idx[a:b])
        out["test"] += list(idx[b:c])
        out["rest"] += list(idx[c:])
    res = {k: np.array(sorted(v), dtype=np.int64) for k, v in out.items()}
    res["n_files"] = np.array(len(paths))
    res["n_unique"] = np.array(len(keep))
    return res


def photo_ids(paths: list[Path]) -> np.ndarray:
    ids = []
    for p in paths:
        m = PHOTO_RE.match(p.name)
        if m is None:
            raise ValueError(f"no photo id in {p.name}")
        ids.append(int(m.group(1)))
    return np.array(ids)


def group_split(
    groups: np.ndarray, fractions=(0.70, 0.15, 0.15), seed: int = 0
) -> dict[str, np.ndarray]:
    """Tile indices of train/val/test with every photo id in exactly one split."""
    rng = np.random.default_rng(seed)
    uniq = rng.permutation(np.unique(groups))
    n = len(uniq)
    a = round(fractions[0] * n)
    b = a + round(fractions[1] * n)
    parts = {"train": uniq[:a], "val": uniq[a:b], "test": uniq[b:]}
    return {k: np.flatnonzero(np.isin(groups, v)) for k, v in parts.items()}


def backbone(weights: str | Path) -> nn.Sequential:
    """ImageNet MobileNetV2 ``features`` (eval mode)."""
    m = torchvision.models.mobilenet_v2(weights=None)
    missing, unexpected = m.load_state_dict(
        torch.load(weights, map_location="cpu", weights_only=True), strict=False
    )
    assert not unexpected and all(k.startswith("classifier") for k in missing)
    return m.features.eval()


class Model(nn.Module):
    """features[start:19] -> pool -> dropout -> Linear(1280, 1); start=19 means head only."""

    def __init__(self, features: nn.Sequential, start: int, dropout: float = 0.2):
        super().__init__()
        self.start = start
        self.blocks = copy.deepcopy(features[start:]) if start < 19 else nn.Sequential()
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(1280, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:  # pooled features of frozen blocks: the head only
            return self.head(x[:, :, None, None]).squeeze(1)
        return self.head(self.blocks(x)).squeeze(1)

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x).mean((2, 3))


@torch.inference_mode()
def run_blocks(blocks: nn.Module, x: np.ndarray | torch.Tensor, bs: int = 256) -> torch.Tensor:
    """Frozen ``blocks`` in eval mode over stored activations (float32 out)."""
    blocks.eval()
    x = torch.as_tensor(x)
    out = [blocks(x[i : i + bs].float()) for i in range(0, len(x), bs)]
    return torch.cat(out)


def set_bn_mode(model: Model, bn_train: bool) -> None:
    """model.train(), with the BatchNorm of the unfrozen blocks in eval mode unless bn_train."""
    model.train()
    if not bn_train:
        for m in model.blocks.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eval()


@torch.inference_mode()
def logits_of(model: Model, x: torch.Tensor, bs: int = 256) -> torch.Tensor:
    model.eval()
    return torch.cat([model(x[i : i + bs].float()) for i in range(0, len(x), bs)])


def bce(logits: torch.Tensor, y: torch.Tensor, pos_weight: float | None = None) -> float:
    pw = None if pos_weight is None else torch.tensor([pos_weight])
    return float(nn.functional.binary_cross_entropy_with_logits(logits, y.float(), pos_weight=pw))


def train(
    model: Model,
    x: torch.Tensor,
    y: torch.Tensor,
    xv: torch.Tensor | None,
    yv: torch.Tensor | None,
    *,
    xp: torch.Tensor | None = None,
    xpv: torch.Tensor | None = None,
    head_epochs: int,
    ft_epochs: int = 0,
    bn_train: bool = False,
    lr_head: float = 1e-3,
    lr_head2: float = 1e-3,
    lr_blocks: float = 1e-4,
    weight_decay: float = 0.0,
    pos_weight: float | None = None,
    batch_size: int = 32,
    patience: int | None = None,
    seed: int = 0,
    sampler_weights: np.ndarray | None = None,
) -> dict:
    """Stage 1 (head only, blocks frozen in eval mode) then stage 2 (blocks + head).

    ``model.blocks`` holds the unfrozen blocks; in stage 1 they are frozen (eval mode), so stage 1
    trains the head on their precomputed pooled outputs ``xp`` / ``xpv`` when given. Returns
    the per-epoch val losses, the state with the lowest val loss ('best') and the last state.
    Early stopping (``patience``) applies to stage 1 when there is no stage 2.
    """
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    lossf = nn.BCEWithLogitsLoss(
        pos_weight=None if pos_weight is None else torch.tensor([pos_weight])
    )
    hist = {"val_loss": [], "train_loss": []}
    best = (math.inf, None, -1)
    stale = 0
    n = len(x)

    def epoch(opt, stage2: bool):
        if stage2:
            set_bn_mode(model, bn_train)
        else:
            model.train()
            model.blocks.eval()
        if sampler_weights is not None:
            order = torch.multinomial(torch.as_tensor(sampler_weights), n, True, generator=g)
        else:
            order = torch.randperm(n, generator=g)
        tot = 0.0
        for i in range(0, n, batch_size):
            b = order[i : i + batch_size]
            if stage2:
                out = model(x[b].float())
            elif xp is not None:
                out = model.head(xp[b].float()[:, :, None, None]).squeeze(1)
            else:
                with torch.no_grad():
                    xb = x[b].float()
                    feats = model.blocks(xb) if xb.dim() == 4 else xb[:, :, None, None]
                out = model.head(feats).squeeze(1)
            loss = lossf(out, y[b].float())
            opt.zero_grad()
            loss.backward()
            opt.step()
            tot += float(loss) * len(b)
        hist["train_loss"].append(tot / n)

    def validate(ep: int, stage2: bool) -> bool:
        nonlocal best, stale
        if xv is None:
            return False
        use_pooled = not stage2 and xpv is not None
        vl = bce(logits_of(model, xpv if use_pooled else xv), yv, pos_weight)
        hist["val_loss"].append(vl)
        if vl < best[0]:
            best = (vl, copy.deepcopy(model.state_dict()), ep)
            stale = 0
        else:
            stale += 1
        return patience is not None and stale >= patience

    for p in model.blocks.parameters():
        p.requires_grad_(False)
    opt = torch.optim.Adam(model.head.parameters(), lr=lr_head, weight_decay=weight_decay)
    for ep in range(head_epochs):
        epoch(opt, False)
        if validate(ep, False) and ft_epochs == 0:
            break
    if ft_epochs:
        for p in model.blocks.parameters():
            p.requires_grad_(True)
        opt = torch.optim.Adam(
            [
                {"params": model.head.parameters(), "lr": lr_head2},
                {"params": model.blocks.parameters(), "lr": lr_blocks},
            ],
            weight_decay=weight_decay,
        )
        for ep in range(head_epochs, head_epochs + ft_epochs):
            epoch(opt, True)
            validate(ep, True)
    hist["best_epoch"] = best[2]
    hist["best_state"] = best[1]
    hist["last_state"] = copy.deepcopy(model.state_dict())
    return hist


def fit_temperature(logits: torch.Tensor, y: torch.Tensor) -> float:
    """T minimising the NLL of sigmoid(logit / T) (LBFGS on log T)."""
    log_t = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200, line_search_fn="strong_wolfe")
    lf, yf = logits.double(), y.double()

    def closure():
        opt.zero_grad()
        loss = nn.functional.binary_cross_entropy_with_logits(lf / log_t.double().exp(), yf)
        loss.backward()
        return loss

    opt.step(closure)
    return float(log_t.exp())


def auroc(score: np.ndarray, y: np.ndarray) -> float:
    """Mann-Whitney AUROC with tie handling (y=1 positive)."""
    score, y = np.asarray(score, dtype=np.float64), np.asarray(y)
    order = np.argsort(score, kind="mergesort")
    s = score[order]
    ranks = np.empty(len(s))
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and s[j + 1] == s[i]:
            j += 1
        ranks[i : j + 1] = (i + j) / 2 + 1
        i = j + 1
    r = np.empty(len(s))
    r[order] = ranks
    n1, n0 = int((y == 1).sum()), int((y == 0).sum())
    return float((r[y == 1].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def binary_metrics(prob: np.ndarray, y: np.ndarray, thr: float = 0.5) -> dict:
    pred = prob >= thr
    tp = int((pred & (y == 1)).sum())
    tn = int((~pred & (y == 0)).sum())
    fp = int((pred & (y == 0)).sum())
    fn = int((~pred & (y == 1)).sum())
    rec = tp / max(tp + fn, 1)
    spec = tn / max(tn + fp, 1)
    return {
        "acc": (tp + tn) / len(y),
        "bal_acc": (rec + spec) / 2,
        "recall": rec,
        "precision": tp / max(tp + fp, 1),
        "specificity": spec,
        "errors": fp + fn,
    }


def load_store(path: str | Path, variant: int = 0) -> dict:
    """An ``extract.py`` store, one dihedral variant's activations and stats."""
    d = np.load(path)
    v = int(np.flatnonzero(d["variants"] == variant)[0])
    return {
        "act": torch.from_numpy(d["act"][:, v]),
        "stats": d["stats"][:, v],
        "labels": d["labels"],
        "paths": [str(p) for p in d["paths"]],
        "channels": d["channels"],
    }


def inputs_for(features: nn.Sequential, act: torch.Tensor, k: int) -> torch.Tensor:
    """The input of features[19 - k] (float16) from the stored input of features[15]."""
    start = 19 - k
    assert start >= FIRST_STORED
    if start == FIRST_STORED:
        return act
    return run_blocks(features[FIRST_STORED:start], act).half()


def pooled_for(features: nn.Sequential, act: torch.Tensor) -> torch.Tensor:
    """The frozen 1280-d pooled features from the stored input of features[15]."""
    return run_blocks(features[FIRST_STORED:], act).mean((2, 3))


def block_slices(channels: np.ndarray) -> dict[int, tuple[slice, slice]]:
    """Where the (mean, std) of each block's output lie in an ``extract.py`` stats row."""
    out, pos = {}, 0
    for b, c in enumerate(channels):
        out[b] = (slice(pos, pos + c), slice(pos + c, pos + 2 * c))
        pos += 2 * c
    return out


def append_jsonl(path: str | Path, row: dict) -> None:
    with Path(path).open("a") as f:
        f.write(json.dumps(row) + "\n")


def pooled_cached(features: nn.Sequential, store: str | Path, act: torch.Tensor) -> torch.Tensor:
    """``pooled_for`` of a whole store, kept next to it (STORE.pooled.npy) after the first call."""
    cache = Path(str(store) + ".pooled.npy")
    if cache.exists():
        out = torch.from_numpy(np.load(cache))
        if len(out) == len(act):
            return out
    out = pooled_for(features, act)
    np.save(cache, out.numpy())
    return out
