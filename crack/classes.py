"""Which class folder holds the cracks: detected from its name, never from alphabetical order."""

from __future__ import annotations

import re

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
        raise ValueError(
            f"Expected exactly 2 class folders (crack and no crack), found {len(names)}: {names}."
        )
    if positive_class is not None:
        if positive_class not in names:
            raise ValueError(
                f"data.positive_class={positive_class!r} is not one of the class folders {names}."
            )
        return positive_class
    roles = {name: class_role(name) for name in names}
    positives = [n for n, r in roles.items() if r == "positive"]
    negatives = [n for n, r in roles.items() if r == "negative"]
    if len(positives) == 1 and len(negatives) == 1:
        return positives[0]
    raise ValueError(
        f"Cannot tell which class folder holds the cracks: found {names}. "
        f"Name it explicitly, e.g. data.positive_class={names[0]}"
    )


def class_names_by_label(class_names: list[str], positive_class: str) -> list[str]:
    """The class names ordered by label: [negative, positive]."""
    (negative,) = [n for n in class_names if n != positive_class]
    return [negative, positive_class]
