"""Split hygiene: duplicates, train/eval overlap, seeded subsets, and splits too small to use.

Every check here runs before the prepare stage writes anything, so a bad input never replaces good
prepared data.
"""

from __future__ import annotations

import random
import unicodedata
from pathlib import Path
from collections.abc import Iterable

from tarpo.records import DataError, ReadReport, Record


def normalize_prompt(text: str) -> str:
    """Key for duplicate/overlap checks: unicode-folded, case-folded, whitespace collapsed."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def dedupe(records: Iterable[Record]) -> tuple[list[Record], int]:
    """First occurrence of each normalised prompt, and how many later copies were dropped."""
    seen, kept, dropped = set(), [], 0
    for record in records:
        key = normalize_prompt(record.prompt)
        if key in seen:
            dropped += 1
        else:
            seen.add(key)
            kept.append(record)
    return kept, dropped


def drop_overlap(train: Iterable[Record], eval_records: Iterable[Record]) -> tuple[list[Record], int]:
    """Train without any prompt that is also in eval (eval is the set we must not train on)."""
    eval_keys = {normalize_prompt(r.prompt) for r in eval_records}
    train = list(train)
    kept = [r for r in train if normalize_prompt(r.prompt) not in eval_keys]
    return kept, len(train) - len(kept)


def sample_records(records: list[Record], size: int | None, seed: int) -> list[Record]:
    """A seeded subset of `size` records in their original order (all when size is None or larger)."""
    if size is None or size >= len(records):
        return list(records)
    keep = sorted(random.Random(seed).sample(range(len(records)), size))
    return [records[i] for i in keep]


MIN_TRAIN_RECORDS = 2  # a single problem is not a training set (every step would repeat it)


def require_records(records: list[Record], report: ReadReport, where: str, key: str) -> None:
    """A file (or hub split) that gave no record at all is an error naming it and the fix."""
    if records:
        return
    if report.rows_read == 0:
        raise DataError(f"{where}: no records (empty or blank); point {key} at a file with problems")
    first = report.problems[0] if report.problems else "no usable row"
    raise DataError(f"{where}: all {report.rows_read} rows were malformed and skipped (first: {first}); "
                    f"fix the file, or data.fields if its field names differ")


def require_holdout(records: list[Record], n_eval: int, where: str) -> None:
    """Holding out n_eval records for evaluation must leave at least one to train on."""
    if len(records) <= n_eval:
        raise DataError(f"{where}: {len(records)} record(s), not more than the {n_eval} held out for "
                        f"evaluation; add records, lower data.eval_size, or set data.eval_path to a separate file")


def require_distinct_files(train_path, eval_path) -> None:
    """The eval file must not be the training file (the model would be scored on what it trained on)."""
    if eval_path and train_path and Path(eval_path).resolve() == Path(train_path).resolve():
        raise DataError(f"data.eval_path: {eval_path} is the training file (data.train_path); set a separate "
                        "eval file, or data.eval_path: null to hold out data.eval_size records")


def require_nonempty_splits(train: list[Record], eval_records: list[Record], stats: dict[str, int],
                            where: str) -> None:
    """After de-duplication and the overlap check, both splits must still hold problems."""
    if not eval_records:
        raise DataError(f"{where}: the eval split is empty after dropping {stats['eval_duplicates_dropped']} "
                        "duplicate prompts; use an eval file with distinct problems")
    if not train:
        raise DataError(f"{where}: the train split is empty after dropping {stats['train_duplicates_dropped']} "
                        f"duplicates and {stats['overlap_dropped']} prompts that are also in the eval set; "
                        "use training problems that differ from the eval problems")
    if len(train) < MIN_TRAIN_RECORDS:
        raise DataError(f"{where}: only {len(train)} training problem(s); RL on fewer than {MIN_TRAIN_RECORDS} "
                        "distinct problems repeats one question every step: add problems to the training file")
