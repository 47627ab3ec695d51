"""prepare stage: read the `data` params section, write train/eval records and prepare metrics.

Outputs (published together: pipeline.publish; a kill leaves all of them old or all new):
  <out_dir>/train.jsonl, <out_dir>/eval.jsonl   one Record per line {id, prompt, answer, source, solution}
  <out_dir>/skipped.json                        every malformed row as "path:line: message"
  <metrics_path>                                flat counts for DVC (rows read, skipped, dropped, kept)
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from pipeline.publish import publishing
from tarpo.data import load_splits
from tarpo.io import write_json_atomic, write_jsonl_atomic

OUT_DIR = "data/prepared"
METRICS_PATH = "metrics/prepare.json"
TRAIN_FILE, EVAL_FILE, SKIPPED_FILE = "train.jsonl", "eval.jsonl", "skipped.json"


def _section(obj) -> dict:
    """A config sub-section (pydantic model, mapping or None) as a plain dict."""
    if obj is None:
        return {}
    if isinstance(obj, Mapping):
        return dict(obj)
    if hasattr(obj, "model_dump"):
        return obj.model_dump()
    return dict(vars(obj))


def build_splits(data_cfg):
    """The train/eval Splits that `data_cfg` describes (nothing written)."""
    return load_splits(
        source=data_cfg.source, train_path=data_cfg.train_path, eval_path=data_cfg.eval_path,
        fields=_section(data_cfg.fields),
        hub={"name": data_cfg.hub_name, "config": data_cfg.hub_config,
             "train_split": data_cfg.hub_train_split, "eval_split": data_cfg.hub_eval_split},
        train_size=data_cfg.train_size, eval_size=data_cfg.eval_size,
        malformed=data_cfg.malformed, seed=data_cfg.seed, synthetic=_section(data_cfg.synthetic),
        reasoning_gym_dataset=_section(data_cfg.reasoning_gym).get("dataset"),
        graph=_section(getattr(data_cfg, "graph", None)))


def run_prepare(*, data_cfg, out_dir: str | Path = OUT_DIR,
                metrics_path: str | Path = METRICS_PATH) -> dict[str, int]:
    """Build disjoint train/eval sets per `data_cfg` (a DataConfig) and write them; returns the metrics."""
    splits = build_splits(data_cfg)
    with publishing("prepare", [out_dir, metrics_path]) as outputs:
        staged = outputs.dir(out_dir)
        write_jsonl_atomic(staged / TRAIN_FILE, (r.to_dict() for r in splits.train))
        write_jsonl_atomic(staged / EVAL_FILE, (r.to_dict() for r in splits.eval))
        write_json_atomic(staged / SKIPPED_FILE, {"problems": splits.problems})
        write_json_atomic(outputs.file(metrics_path), splits.stats)
    return splits.stats
