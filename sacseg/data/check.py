"""The data check before training: every file of a data set decoded once, sizes and label values checked, results cached."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import warnings
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from sacseg.utils.cache import cache_dir
from sacseg.utils.io import atomic_open, read_image

from ._base import PairedSegmentation, read_label, size_mismatch_message, unknown_values_message

__all__ = ["DataCheck", "check_datasets"]

# A cache file's format; a file of another version is ignored (every file is decoded again).
_CACHE_VERSION = 1


@dataclasses.dataclass(frozen=True)
class DataCheck:
    """What ``check_datasets`` did: ``files`` checked, of which ``decoded`` were decoded now (the others were
    remembered from an earlier check in ``cache``)."""

    files: int
    decoded: int
    cache: Path

    def describe(self) -> str:
        """One line for the run's header and log."""
        remembered = self.files - self.decoded
        return f"data check: {self.files} files, {self.decoded} decoded now, {remembered} remembered in {self.cache}"


def check_datasets(datasets: Iterable[object], threads: int = 1, progress: bool = True, save: bool = True) -> DataCheck | None:
    """Decode every image and label file of the file-based data sets in ``datasets`` and check each pair:
    the image and its label of one size, every label value one the data set knows.

    Data sets built on ``PairedSegmentation`` are checked; generated ones (ScaleScenes) need nothing,
    and without file-based ones this returns None. A file is decoded again only when its size or
    modification time differ from the record of an earlier check (the cache, one JSON file per data
    folder under ``cache_dir()/data_check``); the records of files decoded now are saved there
    (atomically, when ``save``; a cache that cannot be written is a warning). ``threads`` decode in
    parallel; ``progress`` shows a bar. Raises ValueError naming the first bad file, and how many
    more there are.
    """
    paired = [d for d in datasets if isinstance(d, PairedSegmentation)]
    if not paired:
        return None
    labels = {os.path.abspath(label) for d in paired for _, label in d.pairs}
    files = sorted({os.path.abspath(image) for d in paired for image, _ in d.pairs} | labels)
    cache = cache_dir() / "data_check" / f"{hashlib.sha256(os.path.commonpath(files).encode()).hexdigest()[:16]}.json"
    records = _read_cache(cache)
    problems: dict[str, str] = {}
    todo = []
    for name in files:
        try:
            stat = os.stat(name)
        except OSError as err:
            problems[name] = f"cannot read {name}: {err.strerror or err}"
            continue
        if records.get(name, {}).get("stat") != [stat.st_size, stat.st_mtime_ns]:
            records.pop(name, None)
            todo.append((name, [stat.st_size, stat.st_mtime_ns]))
    with (
        ThreadPoolExecutor(max(1, threads)) as pool,
        tqdm(total=len(todo), desc="check data", unit="file", disable=not progress or not todo) as bar,
    ):
        for (name, signature), found in zip(todo, pool.map(lambda item: _decode(item[0], item[0] in labels), todo)):
            bar.update(1)
            if isinstance(found, str):
                problems[name] = found
            else:
                records[name] = {"stat": signature, **found}
    if save and todo:
        _write_cache(cache, records)
    for dataset in paired:
        for image, label in dataset.pairs:
            problem = _pair_problem(dataset, Path(os.path.abspath(image)), Path(os.path.abspath(label)), records, problems)
            if problem is not None:
                problems.setdefault(str(label), problem)
    if problems:
        first, *others = problems
        more = f" (and {len(others)} more bad files: {', '.join(others[:3])}{', ...' if len(others) > 3 else ''})"
        raise ValueError(f"data check: {problems[first]}{more if others else ''}")
    return DataCheck(len(files), len(todo), cache)


def _decode(name: str, is_label: bool) -> dict[str, Any] | str:
    """A file's record (its ``shape`` [H, W], a label's distinct ``values`` too), or the error decoding it."""
    try:
        if is_label:
            array = read_label(Path(name))
            return {"shape": list(array.shape), "values": np.unique(array).tolist()}
        image = read_image(name)
        return {"shape": [image.height, image.width]}
    except ValueError as err:  # read_image and read_label name the file
        return str(err)


def _pair_problem(
    dataset: PairedSegmentation, image: Path, label: Path, records: dict[str, Any], problems: dict[str, str]
) -> str | None:
    """What is wrong with one pair of decoded files (None: nothing; a file that did not decode is already a problem)."""
    if str(image) in problems or str(label) in problems:
        return None
    (height, width), label_record = records[str(image)]["shape"], records[str(label)]
    mismatch = size_mismatch_message(image, (height, width), label, (label_record["shape"][0], label_record["shape"][1]))
    return mismatch or unknown_values_message(label, label_record["values"], dataset.lut, dataset.label_hint)


def _read_cache(path: Path) -> dict[str, Any]:
    """The records of a cache file; none when it is missing, unreadable or of another version."""
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(content, dict) or content.get("version") != _CACHE_VERSION:
        return {}
    files = content.get("files")
    return files if isinstance(files, dict) else {}


def _write_cache(path: Path, records: dict[str, Any]) -> None:
    try:
        with atomic_open(path, "w", encoding="utf-8") as handle:
            json.dump({"version": _CACHE_VERSION, "files": records}, handle)
    except OSError as err:  # a cache is a saving, not a requirement
        warnings.warn(f"the data check's results were not saved: {err}", stacklevel=3)
