"""Train/eval splits for the prepare stage, prompt building, and reading prepared records back.

The pieces live in modules named after them: `tarpo.records` (Record, DataError, gold text),
`tarpo.readers` (one reader per source), `tarpo.synthetic` (the seeded generator) and `tarpo.hygiene`
(duplicates, overlap, minimum sizes). Their public names are re-exported here.

Where we deliberately depart from the reference (the authors' released TARPO code)'s data handling:
1. Train and eval are made disjoint on normalised prompt text, and duplicates are dropped.
2. Degenerate splits stop the prepare stage before it writes anything: an empty or blank file, a
   file whose every row was skipped, the eval file equal to the train file, a file too small to hold
   out the eval set, and a split left empty after de-duplication.
3. `gsm8k` and `math` read local files when `data.train_path` is set, else the hub dataset; when
   neither is possible the error names both fixes.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from tarpo.hygiene import (dedupe, drop_overlap, normalize_prompt, require_distinct_files, require_holdout,
                           require_nonempty_splits, require_records, sample_records)
from tarpo.readers import (GSM8K_HUB, MATH_HUB, HubUnavailable, check_input_path, iter_jsonl, read_gsm8k, read_hub,
                           read_math, read_reasoning_gym, read_table)
from tarpo.records import (DataError, ReadReport, Record, Rows, UniqueIds, clean_gsm8k_solution, gold_from_answer,
                           gold_text)
from tarpo.rewards import DEFAULT_MARKER
from tarpo.graph import graph_problems, record_graph
from tarpo.synthetic import synthetic_problem, synthetic_problems

__all__ = ["SOURCES", "DEFAULT_SYSTEM_PROMPT", "DataError", "HubUnavailable", "ReadReport", "Record", "Splits",
           "build_prompt", "clean_gsm8k_solution", "dedupe", "default_system_prompt", "drop_overlap",
           "gold_from_answer", "gold_text", "load_splits", "normalize_prompt", "read_gsm8k", "read_hub",
           "read_math", "read_prepared", "read_reasoning_gym", "read_table", "sample_records",
           "synthetic_problem", "synthetic_problems"]

SOURCES = ("synthetic", "gsm8k", "math", "jsonl", "parquet", "hub", "reasoning-gym", "graph")
GENERATED_SOURCES = ("synthetic", "reasoning-gym", "graph")  # make their own eval split: data.eval_path means nothing


def default_system_prompt(marker: str = DEFAULT_MARKER) -> str:
    """Our own wording of the reference's instruction: reason first, answer after the marker."""
    return (f"You are a helpful assistant who solves problems step by step. Work through the problem "
            f"first, then write the final answer after {marker} on the last line, like this: "
            f"<your reasoning> {marker} <final answer>.")


DEFAULT_SYSTEM_PROMPT = default_system_prompt()



# ---------------------------------------------------------------- prompts

def build_prompt(tokenizer, question: str, system_prompt: str | None = None, *,
                 marker: str = DEFAULT_MARKER) -> str:
    """Chat-templated prompt text (generation prompt added) for one question.

    system_prompt None -> default_system_prompt(marker); "" -> no system message. A tokenizer
    without a chat template gets a plain "System/User/Assistant" layout.
    """
    system_prompt = default_system_prompt(marker) if system_prompt is None else system_prompt
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages.append({"role": "user", "content": question.strip()})
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return "".join(f"{m['role'].capitalize()}: {m['content']}\n" for m in messages) + "Assistant:"


# ---------------------------------------------------------------- train/eval splits

SYNTHETIC_DEFAULT_SIZES = (1000, 200)  # (train, eval) when the config leaves sizes unset
HOLDOUT_FRACTION = 0.1  # eval share held out of the train file when no eval file is given


@dataclass
class Splits:
    """Disjoint, de-duplicated train and eval records plus the counts the prepare stage reports."""

    train: list[Record]
    eval: list[Record]
    stats: dict[str, int]
    problems: list[str]


def _read_file(source: str, path: str | Path, fields, malformed: str, report: ReadReport) -> list[Record]:
    if source == "gsm8k":
        return read_gsm8k(path, malformed=malformed, report=report)
    if source == "math":
        return read_math(path, malformed=malformed, report=report)
    return read_table(path, fields=fields, malformed=malformed, report=report)


def _hub_for(source: str, hub: Mapping) -> tuple[str, str | None, str]:
    """(name, config, schema) of the hub dataset a source reads when no local file is given."""
    if source == "gsm8k":
        return (*GSM8K_HUB, "gsm8k")
    if source == "math":
        return (hub.get("name") or MATH_HUB[0], hub.get("config") if hub.get("name") else MATH_HUB[1], "math")
    return hub["name"], hub.get("config"), "table"


def _read_hub_splits(source: str, hub: Mapping, fields, malformed: str, reports: tuple[ReadReport, ReadReport]
                     ) -> tuple[list[Record], list[Record]]:
    """Train and eval splits of the source's hub dataset; unreachable -> one line naming both fixes."""
    name, config, schema = _hub_for(source, hub)
    splits = (hub.get("train_split") or "train", hub.get("eval_split") or "test")
    try:
        return tuple(read_hub(name, split=split, config=config, fields=fields, malformed=malformed,
                              report=report, schema=schema, source=None if schema == "table" else source)
                     for split, report in zip(splits, reports))  # type: ignore[return-value]
    except HubUnavailable as err:
        if source == "hub":
            raise DataError(f"data.hub_name: {err}; or download the files and set data.source to 'jsonl', "
                            "'parquet', 'gsm8k' or 'math' with data.train_path") from err
        raise DataError(f"data.source {source} without data.train_path reads the hub dataset {name}, but "
                        f"{err.reason}; set data.train_path=PATH to a local {source} file, or make the hub "
                        "reachable (pip install datasets, and network access)") from err


def _check_eval_path(source: str, train_path, eval_path) -> None:
    if not eval_path:
        return
    if source in GENERATED_SOURCES or source == "hub":
        raise DataError(f"data.eval_path: ignored by data.source {source} (it makes its own eval split); "
                        "remove it, or use source jsonl/gsm8k/math with data.train_path")
    if not train_path:
        raise DataError(f"data.eval_path: set without data.train_path; source {source} then reads the hub, "
                        "which ignores it: set data.train_path too, or remove data.eval_path")


def _read_raw(source: str, *, train_path, eval_path, fields, hub: Mapping, train_size, eval_size,
              malformed: str, seed: int, synthetic: Mapping, reasoning_gym_dataset, graph: Mapping,
              train_report: ReadReport, eval_report: ReadReport) -> tuple[list[Record], list[Record]]:
    """Raw (train, eval) records for one source, before de-duplication and the overlap check."""
    if source not in SOURCES:
        raise DataError(f"data.source: unknown source {source!r}; choose one of {', '.join(SOURCES)}")
    _check_eval_path(source, train_path, eval_path)
    if source == "synthetic":
        n_train, n_eval = (train_size or SYNTHETIC_DEFAULT_SIZES[0], eval_size or SYNTHETIC_DEFAULT_SIZES[1])
        knobs = {k: v for k, v in synthetic.items() if v is not None}
        eval_records = synthetic_problems(n_eval, seed, **knobs)
        train = synthetic_problems(n_train, seed + 1, exclude=[r.prompt for r in eval_records], **knobs)
        return train, eval_records
    if source == "graph":
        n_train, n_eval = (train_size or SYNTHETIC_DEFAULT_SIZES[0], eval_size or SYNTHETIC_DEFAULT_SIZES[1])
        eval_records = graph_problems(n_eval, seed, **graph)
        train = graph_problems(n_train, seed + 1, exclude_graphs=[record_graph(r) for r in eval_records], **graph)
        return train, eval_records
    if source == "reasoning-gym":
        if not reasoning_gym_dataset:
            raise DataError("data.reasoning_gym.dataset: required for data.source 'reasoning-gym'")
        n_train, n_eval = (train_size or SYNTHETIC_DEFAULT_SIZES[0], eval_size or SYNTHETIC_DEFAULT_SIZES[1])
        return (read_reasoning_gym(reasoning_gym_dataset, size=n_train, seed=seed + 1),
                read_reasoning_gym(reasoning_gym_dataset, size=n_eval, seed=seed))
    if source == "hub" and not hub.get("name"):
        raise DataError("data.hub_name: required for data.source 'hub'")
    if source == "hub" or (source in ("gsm8k", "math") and not train_path):
        return _read_hub_splits(source, hub, fields, malformed, (train_report, eval_report))
    if not train_path:
        raise DataError(f"data.train_path: required for data.source {source!r}")
    for path in (train_path, eval_path):
        if path:
            check_input_path(path, allow_dir=source == "math")  # a loop or a FIFO: refused before anything opens it
    require_distinct_files(train_path, eval_path)
    train = _read_file(source, train_path, fields, malformed, train_report)
    require_records(train, train_report, str(train_path), "data.train_path")
    if eval_path:
        eval_records = _read_file(source, eval_path, fields, malformed, eval_report)
        require_records(eval_records, eval_report, str(eval_path), "data.eval_path")
        return train, eval_records
    n_eval = eval_size or max(1, int(len(train) * HOLDOUT_FRACTION))
    require_holdout(train, n_eval, str(train_path))
    held = set(random.Random(seed).sample(range(len(train)), n_eval))
    return ([r for i, r in enumerate(train) if i not in held],
            [r for i, r in enumerate(train) if i in held])


def load_splits(*, source: str, train_path: str | None = None, eval_path: str | None = None,
                fields: Mapping[str, str | None] | None = None, hub: Mapping | None = None,
                train_size: int | None = None, eval_size: int | None = None, malformed: str = "skip",
                seed: int = 0, synthetic: Mapping | None = None,
                reasoning_gym_dataset: str | None = None, graph: Mapping | None = None) -> Splits:
    """Read train/eval for a source, drop duplicates and train/eval overlap, then subsample (seeded).

    With no eval file, eval is held out of the train file (eval_size, or 10 %). Raises DataError for
    any degenerate split (module docstring) before the caller writes anything.
    """
    train_report, eval_report = ReadReport(), ReadReport()
    train, eval_records = _read_raw(
        source, train_path=train_path, eval_path=eval_path, fields=fields, hub=hub or {},
        train_size=train_size, eval_size=eval_size, malformed=malformed, seed=seed,
        synthetic=synthetic or {}, reasoning_gym_dataset=reasoning_gym_dataset, graph=graph or {},
        train_report=train_report, eval_report=eval_report)
    eval_records, eval_dups = dedupe(eval_records)
    train, train_dups = dedupe(train)
    train, overlap = drop_overlap(train, eval_records)
    train = sample_records(train, train_size, seed)
    eval_records = sample_records(eval_records, eval_size, seed + 1)
    stats = {
        "train_rows_read": train_report.rows_read, "eval_rows_read": eval_report.rows_read,
        "train_skipped_rows": train_report.skipped, "eval_skipped_rows": eval_report.skipped,
        "skipped_rows": train_report.skipped + eval_report.skipped,
        "train_duplicates_dropped": train_dups, "eval_duplicates_dropped": eval_dups,
        "duplicates_dropped": train_dups + eval_dups, "overlap_dropped": overlap,
        "train_count": len(train), "eval_count": len(eval_records),
    }
    require_nonempty_splits(train, eval_records, stats, f"data.source {source}"
                            + (f" ({train_path})" if train_path else ""))
    return Splits(train=train, eval=eval_records, stats=stats,
                  problems=train_report.problems + eval_report.problems)


def read_prepared(path: str | Path) -> list[Record]:
    """Records written by the prepare stage; any bad line or repeated id is fatal (prepare wrote it)."""
    records, rows, ids = [], Rows("fail", None), UniqueIds()
    for where, row in iter_jsonl(Path(path), rows):
        missing = [k for k in ("id", "prompt", "answer", "source") if k not in row]
        if missing:
            raise DataError(f"{where}: missing field {missing[0]!r}; re-run the prepare stage")
        record = Record.from_dict(row)
        ids.check(record.id, where)
        records.append(record)
    return records
