"""Every usable image of a data root: its label, content hash and split, and what was skipped."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from crack.classes import has_split_folders
from crack.errors import UserError
from crack.file_record import check_images_recorded
from crack.files import IMAGE_EXTENSIONS, describe_kinds, handle_bad_files, list_files
from crack.settings import DataSettings
from crack.splits import (
    SPLITS,
    Sample,
    count_by_split,
    duplicates_and_groups,
    group_ids,
    handle_conflicts,
    identical_but_different,
    leaks_between_given_splits,
    stratified_split,
)

log = logging.getLogger(__name__)


def _image_files(root: Path, classes: Sequence[str]) -> tuple[list[tuple[Path, int, str]], int]:
    """(path, label, given split or "") of every image file, and the number of other files.

    Stops if a class folder holds no image file.
    """
    given = SPLITS if has_split_folders(root) else ("",)
    found, skipped = [], []
    for split_name in given:
        for label, name in enumerate(classes):
            folder = root / split_name / name
            images, others = list_files(folder)
            skipped += others
            if not images:
                raise UserError(
                    f"Class folder {folder} holds no images "
                    f"({', '.join(sorted(IMAGE_EXTENSIONS))})"
                    + (f", only {describe_kinds(others)}" if others else "")
                    + ". Add images, or name the two class folders to use with data.classes=[a,b]."
                )
            found += [(path, label, split_name) for path in images]
    log.info("Found %d image files under %s", len(found), root)
    if skipped:
        log.info("Skipped %d non-image files: %s", len(skipped), describe_kinds(skipped))
    return found, len(skipped)


def index_images(
    root: Path,
    classes: Sequence[str],
    settings: DataSettings | None = None,
    record: Path | None = None,
) -> tuple[list[Sample], dict]:
    """Every readable image under ``root`` with its label, content hash and split, and a summary.

    Ready-made split folders win. Otherwise byte-identical files, and files of one group
    (``settings.group_pattern``), are kept within one split; ``settings.split=None`` puts every
    image in the test split. Unreadable files are skipped or stop the run (``on_bad_file``);
    files stored under both classes stop it or are dropped (``on_conflict``). The summary (plain
    types) counts what was found, merged, dropped and where it went. With ``record``
    (`crack.file_record`), files unchanged since an earlier run are not read again.
    """
    settings = settings or DataSettings(root=str(root))
    split, split_seed, group_pattern = settings.split, settings.split_seed, settings.group_pattern
    found, skipped = _image_files(root, classes)
    paths = [path for path, _, _ in found]
    checked = check_images_recorded(paths, root, settings.max_image_pixels, record)
    bad = {path.relative_to(root).as_posix(): reason for path, reason in checked.bad.items()}
    handle_bad_files(bad, settings.on_bad_file)
    rows = [
        (path.relative_to(root).as_posix(), label, given, checked.sha256[path])
        for path, label, given in found
        if path in checked.sha256
    ]
    conflicts = identical_but_different(
        [r[0] for r in rows], [r[3] for r in rows], [r[1] for r in rows]
    )
    dropped = handle_conflicts(conflicts, settings.on_conflict)
    rows = [r for r in rows if r[0] not in dropped]
    for label, name in enumerate(classes):
        if not any(r[1] == label for r in rows):
            raise UserError(
                f"None of the images of class folder {name!r} under {root} is usable "
                "(see the unreadable or conflicting files above)."
            )

    paths, labels, given_splits, hashes = (list(column) for column in zip(*rows, strict=True))
    groups = [""] * len(rows)
    given = has_split_folders(root)
    if split is None:  # evaluation of the whole folder
        samples = [Sample(p, label, "test", sha) for p, label, _, sha in rows]
        leaks, group_pattern = [], None
    elif given:
        samples = [Sample(*r) for r in rows]
        leaks = leaks_between_given_splits(paths, hashes, given_splits)
        group_pattern = None  # the given split is used as it is
    else:
        leaks = []
        if group_pattern:
            # Looked for in the path below the class folder: the file name, or sub/name.
            groups = group_ids([p.split("/", 1)[1] for p in paths], group_pattern)
        samples = stratified_split(paths, labels, split, split_seed, hashes, groups)

    summary = {
        "files_found": len(found),
        "non_image_files_skipped": skipped,
        "bad_files": bad,
        "conflicts": conflicts,
        "conflict_files_dropped": len(dropped),
        "leaks_between_given_splits": leaks,
        **duplicates_and_groups(hashes, groups, group_pattern),
        "split_source": (
            "none: every image in test"
            if split is None
            else "folders"
            if given
            else f"fractions {list(split)}, seed {split_seed}"
        ),
        "splits": count_by_split(samples, classes),
    }
    return samples, summary
