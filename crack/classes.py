"""The two class folders of a data root, and which holds the cracks: told from the folder names,
never from alphabetical order."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from crack.errors import UserError
from crack.files import IGNORED_FOLDERS, list_images
from crack.splits import SPLITS

# Words that mark a folder as the crack class or the intact class once negations are handled.
_POSITIVE_WORDS = {
    "positive",
    "pos",
    "crack",
    "cracks",
    "cracked",
    "cracking",
    "defect",
    "defective",
}
_NEGATIVE_WORDS = {"negative", "neg", "intact", "normal", "uncracked", "noncracked", "healthy"}
# A negation in front of a crack word turns it into the intact class ("no_crack", "not cracked").
_NEGATION = re.compile(r"(^|_)(no|not|non|un|without)_?(crack|cracks|cracked|defect|defects)($|_)")


def _tokens(name: str) -> list[str]:
    """Lower-case words of a folder name, with leading index prefixes ("0_", "1-") dropped."""
    normal = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
    normal = re.sub(r"^\d+_", "", normal)
    return normal.split("_") if normal else []


def class_role(name: str) -> str | None:
    """Return "positive", "negative" or None (unknown) for one class folder name."""
    normal = "_".join(_tokens(name))
    if _NEGATION.search(normal) or re.match(r"^(no|non|un)(crack|cracks|cracked)$", normal):
        return "negative"
    words = set(normal.split("_"))
    is_positive = bool(words & _POSITIVE_WORDS)
    is_negative = bool(words & _NEGATIVE_WORDS)
    if is_positive == is_negative:
        return None
    return "positive" if is_positive else "negative"


def detect_positive_class(class_names: list[str], positive_class: str | None = None) -> str:
    """Pick the crack class (label 1) among exactly two class folder names.

    With ``positive_class`` given, it must be one of the names. Otherwise the names must be
    recognisable as one crack class and one intact class (Positive/Negative, crack/no_crack,
    cracked/not_cracked, ...); anything ambiguous stops with an error naming the fix.
    """
    names = sorted(class_names)
    if len(names) != 2:
        raise UserError(
            f"Expected exactly 2 class folders (crack and no crack), found {len(names)}: {names}."
        )
    if positive_class is not None:
        if positive_class not in names:
            raise UserError(
                f"data.positive_class={positive_class!r} is not one of the class folders {names}."
            )
        return positive_class
    roles = {name: class_role(name) for name in names}
    positives = [n for n, r in roles.items() if r == "positive"]
    negatives = [n for n, r in roles.items() if r == "negative"]
    if len(positives) == 1 and len(negatives) == 1:
        return positives[0]
    raise UserError(
        f"Cannot tell which class folder holds the cracks: found {names}. "
        f"Name it explicitly, e.g. data.positive_class={names[0]}"
    )


def class_names_by_label(class_names: list[str], positive_class: str) -> list[str]:
    """The class names ordered by label: [negative, positive]."""
    (negative,) = [n for n in class_names if n != positive_class]
    return [negative, positive_class]


def _class_folders(folder: Path) -> list[str]:
    return sorted(
        p.name
        for p in folder.iterdir()
        if p.is_dir() and not p.name.startswith(".") and p.name not in IGNORED_FOLDERS
    )


def has_split_folders(root: Path) -> bool:
    """True if ``root`` holds ready-made ``train/``, ``val/`` and ``test/`` folders."""
    return all((root / split).is_dir() for split in SPLITS)


def _choose_class_folders(
    folder: Path, names: list[str], classes: Sequence[str] | None
) -> list[str]:
    """The two class folders to use, or an error naming ``folder`` and the fix."""
    if classes is not None:
        if len(classes) != 2 or len(set(classes)) != 2:
            raise UserError(f"data.classes must name 2 class folders, got {list(classes)}.")
        missing = [name for name in classes if name not in names]
        if missing:
            raise UserError(
                f"data.classes={list(classes)}: no folder {missing} under {folder} "
                f"(its class folders: {names})."
            )
        return list(classes)
    if not names:
        loose = len(list_images(folder))
        raise UserError(
            f"data.root={str(folder)!r} holds no class folders"
            + (f" ({loose} images lie directly in it)" if loose else "")
            + ": put the photos into one subfolder per class, e.g. "
            f"{folder / 'Positive'} (cracks) and {folder / 'Negative'} (intact)."
        )
    if len(names) == 1:
        raise UserError(
            f"{folder} holds a single class folder {names}: a crack classifier needs two, "
            "one of photos with cracks and one without. Add the other class folder."
        )
    if len(names) > 2:
        raise UserError(
            f"{folder} holds {len(names)} class folders {names}, expected 2 (crack and no "
            f"crack). Name the two to use, e.g. data.classes=[{names[0]},{names[1]}]."
        )
    return names


def find_classes(
    root: Path, positive_class: str | None = None, classes: Sequence[str] | None = None
) -> list[str]:
    """The class folder names of ``root``, ordered by label: [negative, positive (crack)].

    ``classes`` picks two folders when there are more; the crack class among them is still
    told from the names (or ``positive_class``), never from their order.
    """
    if not root.is_dir():
        raise UserError(f"data.root={str(root)!r} is not a folder. Point data.root at your images.")
    if has_split_folders(root):
        per_split = {split: _class_folders(root / split) for split in SPLITS}
        if classes is None and len({tuple(v) for v in per_split.values()}) != 1:
            raise UserError(
                f"train/, val/ and test/ under {root} hold different class folders: {per_split}"
            )
        chosen = [
            _choose_class_folders(root / split, folders, classes)
            for split, folders in per_split.items()
        ]
        names = chosen[0]
    else:
        names = _choose_class_folders(root, _class_folders(root), classes)
    return class_names_by_label(names, detect_positive_class(names, positive_class))
