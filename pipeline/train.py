"""train stage: TARPO on the prepared train split, starting from the configured model (or its warm-up output).

Reads `data` (prompt format), `model`, `router`, `rollout`, `train`, `tracking` and the warm-up output.
Writes: `checkpoints/` (persistent; a killed run resumes from it when the params hash matches),
`models/tarpo/` (adapter + routers + base.json), `metrics/train.json`, `plots/train.csv`
(one row per step) and `outputs/run_info.json` (tracking run id for evaluate and register), all published as one unit
(pipeline.publish). run_info.json,
`models/tarpo/base.json` and the MLflow run (params `base.*`) record the start weights really loaded: preset, path
and weights fingerprint (pipeline.common.choose_base: the warm-up output only when made from the configured model).
With train.num_processes > 1 or train.accelerate_config set, cli.py re-launches itself through
`accelerate launch` (see `launch_command`); this module then runs once per process.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import json
import os
import shutil
import sys
import time
from pathlib import Path

from pipeline import paths
from pipeline.common import (check_tracking, chat_prompts, choose_base, closing_run, count_long_prompts, file_sha256,
                             model_label, open_run, require_file)
from pipeline.publish import publishing
from tarpo.errors import InputError, read_jsonl_log
from tarpo.io import write_json_atomic, write_text_atomic

LAUNCHED_ENV = "TARPO_ACCELERATE_CHILD"   # set on processes started by launch_command
HASH_FILE = "params.sha256"                # inside the checkpoint dir
STEP_LOG = "steps.jsonl"                   # inside the checkpoint dir: per-step rows, survives a kill
HELDOUT_LOG = "heldout.jsonl"              # inside the checkpoint dir: held-out evaluations (eval.every)
HELDOUT_COLUMNS = ("step", "avg_at_k", "pass_at_1", "soft_ratio", "mean_length", "answer_found_rate")
PLOT_COLUMNS = ("step", "reward_mean", "reward_std", "accuracy", "soft_ratio", "completion_length",
                "explicit_length", "kl_token", "kl_router", "token_entropy", "router_entropy", "lr",
                "grad_norm", "step_seconds")
# appended to plots/train.csv only when the run has them (a default run's CSV keeps its columns)
DYNAMIC_SAMPLING_COLUMNS = ("dynamic_filtered_share", "dynamic_extra_rollouts", "dynamic_sampled_reward_mean")
OVERLONG_COLUMNS = ("truncated_ratio",)
HASHED_SECTIONS = ("data", "model", "router", "rollout", "warmup", "train", "reward")
UNHASHED_TRAIN_KEYS = ("checkpoint_every", "keep_checkpoints", "log_samples_every", "num_processes",
                       "accelerate_config")


# ------------------------------------------------------------------------------------ launching
def needs_launch(cfg) -> bool:
    """True when this process should re-launch itself through `accelerate launch`."""
    multi = cfg.train.num_processes > 1 or cfg.train.accelerate_config is not None
    return multi and os.environ.get(LAUNCHED_ENV) != "1" and not launched_externally()


def launched_externally() -> bool:
    """True under a launcher the user started (`accelerate launch` / `srun` across nodes), not `launch_command`."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and os.environ.get(LAUNCHED_ENV) != "1"


def launch_command(cfg, argv: list[str], *, cuda: bool) -> list[str]:
    """`accelerate launch --num_processes N [--config_file F | --multi_gpu | --cpu] cli.py <argv>` as an argv list."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(cfg.train.num_processes)]
    if cfg.train.accelerate_config:
        config = Path(cfg.train.accelerate_config)
        if not config.is_file():
            raise FileNotFoundError(f"train.accelerate_config: {config} not found (see configs/accelerate/)")
        cmd += ["--config_file", str(config)]
    elif cfg.train.num_processes > 1:
        # torchrun-based launcher; on a CPU-only machine the processes use the gloo backend. (accelerate's
        # `--cpu` launcher starts several processes only through MPI and otherwise runs ONE process.)
        cmd.append("--multi_gpu")
    elif not cuda:
        cmd.append("--cpu")
    return cmd + [str(Path(__file__).resolve().parents[1] / "cli.py"), *argv]


# ------------------------------------------------------------------------------------ resume
def params_hash(cfg, train_path: str | Path, warmup_dir: str | Path, base: dict | None = None) -> str:
    """Hash of everything that changes the training trajectory (config sections + data + start weights)."""
    import hashlib

    dump = cfg.model_dump(mode="json")
    sections = {name: dump[name] for name in HASHED_SECTIONS}
    for key in UNHASHED_TRAIN_KEYS:
        sections["train"].pop(key, None)
    marker = Path(warmup_dir) / paths.WARMUP_MARKER
    sections["_inputs"] = {"train_data": file_sha256(train_path),
                           "warmup": file_sha256(marker) if marker.is_file() else None}
    if base is not None:
        sections["_inputs"]["base_weights"] = base["weights_sha256"]
    return hashlib.sha256(json.dumps(sections, sort_keys=True).encode()).hexdigest()


def probe_tracking(tracking_cfg, checkpoint_dir: str | Path) -> None:
    """Open the store and its experiment now: a store that cannot be used must fail before checkpoints/ is touched
    (a params change deletes them), with a message that says they are still there."""
    if not tracking_cfg.enabled:
        return
    from tarpo.tracking import TrackingUnavailable, open_experiment, store_errors

    try:
        with store_errors(tracking_cfg.uri):
            open_experiment(tracking_cfg.uri, tracking_cfg.experiment)
    except TrackingUnavailable as exc:
        raise TrackingUnavailable(f"{exc}; {checkpoint_dir}/ was left as it was: fix the store, then run train "
                                  "again") from None


def _check_removable(root: Path) -> None:
    """A read-only directory anywhere in `root` would stop rmtree half-way: refuse before deleting anything."""
    for directory in [root, *(p for p in root.rglob("*") if p.is_dir() and not p.is_symlink())]:
        if not os.access(directory, os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(directory))
    if not os.access(root.absolute().parent, os.W_OK | os.X_OK):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(root.absolute().parent))


def prepare_checkpoints(checkpoint_dir: str | Path, digest: str, resume: bool, log=print) -> None:
    """Keep the checkpoints of an interrupted run with the same params; otherwise start fresh.

    A params change between a kill and the next run restarts (logged, the old checkpoints removed), never resumes
    them with other params."""
    root = Path(checkpoint_dir)
    if root.is_dir() and not os.access(root, os.W_OK | os.X_OK):  # read-only: one line before anything else
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(root))
    stored = (root / HASH_FILE).read_text().strip() if (root / HASH_FILE).is_file() else None
    has_any = root.is_dir() and any(root.iterdir())
    if has_any and resume and stored is None:  # never delete a run's checkpoints on a guess
        raise InputError(f"{root / HASH_FILE}: missing, so {root}/ cannot be matched to these params; restore it, "
                         f"or pass --no-resume to start fresh (removes {root}/)")
    if has_any and (not resume or stored != digest):
        why = "--no-resume" if not resume else f"params changed (checkpoint hash {str(stored)[:12]}, now {digest[:12]})"
        _check_removable(root)
        log(f"starting fresh: {why}; removing {root}/")
        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    write_text_atomic(root / HASH_FILE, digest + "\n")


def _read_step_log(path: Path, upto: int, log=print) -> list[dict]:
    """Per-step rows already recorded, cut at the resumed step (rows after the checkpoint are replayed)."""
    if not path.exists():
        return []
    rows = read_jsonl_log(path, stage="train --no-resume", warn=log)
    return [r for r in rows if r.get("step", upto + 1) <= upto]


def _plot_csv(rows: list[dict], columns: tuple[str, ...] = PLOT_COLUMNS) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{row[k]:.6g}" if isinstance(row.get(k), float) else row.get(k, "")) for k in columns})
    return buffer.getvalue()


def plot_columns(cfg) -> tuple[str, ...]:
    """plots/train.csv columns: the fixed ones, plus dynamic sampling's and overlong handling's when they are on."""
    return (PLOT_COLUMNS + (DYNAMIC_SAMPLING_COLUMNS if cfg.train.dynamic_sampling else ())
            + (OVERLONG_COLUMNS if cfg.reward.overlong != "none" else ()))


def heldout_evaluator(cfg, tokenizer, eval_path: str | Path, log=print):
    """`evaluate_fn(policy)` for eval.every: the first eval.every_problems held-out problems, eval.num_samples
    samples each at eval.temperature with the eval seed (no greedy pass), so every point of the curve sees the same
    problems and the same random numbers; None when eval.every is 0."""
    if not cfg.eval.every:
        return None
    from pipeline.evaluate import evaluate_policy
    from tarpo.data import DataError, read_prepared

    records = read_prepared(require_file(eval_path, "prepare"))[:cfg.eval.every_problems]
    if not records:
        raise DataError(f"{eval_path}: no records for the held-out curve (eval.every={cfg.eval.every}); re-run "
                        "`python cli.py prepare` or set eval.every=0")
    during = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"greedy": False})}, deep=True)
    log(f"held-out curve: {len(records)} eval problems x {cfg.eval.num_samples} samples every {cfg.eval.every} steps")

    def evaluate_fn(policy) -> dict[str, float]:
        _, summary = evaluate_policy(policy, tokenizer, records, during)
        return {k: float(summary[k]) for k in HELDOUT_COLUMNS[1:] if isinstance(summary.get(k), (int, float))}

    return evaluate_fn


def summary_metrics(rows: list[dict], last: int = 5) -> dict[str, float]:
    """metrics/train.json: steps, and the mean of the last `last` steps for the curves people compare."""
    if not rows:
        return {"steps": 0}
    tail = rows[-last:]
    keys = ("reward_mean", "accuracy", "soft_ratio", "completion_length", "kl_token", "router_entropy")
    out = {"steps": rows[-1]["step"], "first_reward_mean": rows[0].get("reward_mean", 0.0)}
    for key in keys:
        values = [r[key] for r in tail if isinstance(r.get(key), (int, float))]
        if values:
            out[f"{key}_last{last}"] = sum(values) / len(values)
    return out


def heldout_summary(rows: list[dict]) -> dict[str, float]:
    """metrics/train.json: the held-out avg@k before the first step and after the last (eval.every)."""
    ordered = sorted((r for r in rows if "avg_at_k" in r), key=lambda r: r["step"])
    if not ordered:
        return {}
    return {"heldout_first_avg_at_k": ordered[0]["avg_at_k"], "heldout_last_avg_at_k": ordered[-1]["avg_at_k"],
            "heldout_points": len(ordered)}


def _open_train_run(tracking_cfg, run_id: str | None, tags: dict, log, run_name: str):
    """Continue the checkpoint's run; a run the store does not know (e.g. tracking was off) starts a new one."""
    from tarpo.tracking import TrackingUnavailable

    try:
        return open_run(tracking_cfg, run_id=run_id, tags=tags, stage="train", run_name=run_name)
    except TrackingUnavailable as exc:
        if run_id is None or "cannot resume" not in str(exc):
            raise
        log(f"{exc}; logging the resumed training to a new run")
        return open_run(tracking_cfg, run_id=None, tags=tags, stage="train", run_name=run_name)


def _checkpoint_run_id(checkpoint_dir: Path) -> str | None:
    """The tracking run recorded in the newest readable checkpoint, None when there is none."""
    from tarpo.checkpoint import STATE_FILE, list_checkpoints

    for directory in reversed(list_checkpoints(checkpoint_dir)):
        try:
            return json.loads((directory / STATE_FILE).read_text()).get("run_id")
        except (OSError, ValueError, AttributeError):
            continue
    return None


def _link_upstream_stages(tracker, upstream=(("prepare", paths.PREPARE_METRICS), ("warmup", paths.WARMUP_METRICS))):
    """prepare and warm-up log no run of their own: their metrics files go into the training run (as `prepare/...`,
    `warmup/...` metrics and artifacts) and their names into its stage list, so one run holds the whole pipeline."""
    import json

    from tarpo.tracking import STAGES_TAG

    linked = []
    for stage, path in upstream:
        if not Path(path).is_file():
            continue
        try:
            values = json.loads(Path(path).read_text())
        except ValueError:
            continue  # a stage's own reader reports a corrupt file; linking is best effort
        tracker.log_metrics({f"{stage}/{k}": v for k, v in values.items() if isinstance(v, (int, float))})
        tracker.log_artifact(str(path), "upstream")
        linked.append(stage)
    if linked:
        tracker.set_tags({STAGES_TAG: ",".join([*linked, "train"])})


# ------------------------------------------------------------------------------------ the stage
def build_trainer(cfg, records, base: Path | None, checkpoint_dir: Path, models_dir, log, params_hash=None):
    """(TarpoTrainer, resolved model) for the config: policy from the warm-up output or the preset."""
    from tarpo.factory import load_policy
    from tarpo.rewards import make_reward_fn
    from tarpo.rollout import RolloutSettings
    from tarpo.trainer import TarpoTrainer, TrainSettings

    policy, tokenizer, resolved = load_policy(cfg.model, cfg.router, seed=cfg.train.seed, router_seed=cfg.warmup.seed,
                                              base_path=base, models_dir=models_dir)
    reward = make_reward_fn(marker=cfg.rollout.answer_marker, **cfg.reward.rule_settings())
    prompts = chat_prompts(tokenizer, [r.prompt for r in records], cfg.data, cfg.rollout)
    long_prompts = count_long_prompts(tokenizer, prompts, cfg.rollout.max_prompt_tokens)
    if long_prompts:
        log(f"warning: {long_prompts} of {len(prompts)} training prompts are longer than rollout.max_prompt_tokens="
            f"{cfg.rollout.max_prompt_tokens} and lose their beginning (the system prompt first); raise it")
    reward_fn = lambda texts, golds, ro: [float(x) for x in reward(texts, golds, ro)]  # noqa: E731
    if cfg.reward.function:  # a plugin (validated with the config) replaces the built-in rules in training
        from tarpo.reward_plugin import plugin_reward_fn

        reward_fn = plugin_reward_fn(cfg.reward.function)
        log(f"training reward: {cfg.reward.function} (evaluation scores with the built-in rules)")
    trainer = TarpoTrainer(
        policy, tokenizer, prompts, [r.answer for r in records], reward_fn,
        records=records if cfg.reward.function else None,
        settings=TrainSettings.from_config(cfg),
        rollout_settings=RolloutSettings.from_config(cfg.rollout, cfg.router, tokenizer, policy.vocab_size),
        output_dir=checkpoint_dir.parent, log=log,  # the trainer keeps checkpoints in <output_dir>/checkpoints
        params_hash=params_hash)
    if trainer.checkpoint_dir != checkpoint_dir:
        raise ValueError(f"checkpoint dir {checkpoint_dir} must be named 'checkpoints' (the trainer's layout)")
    return trainer, resolved


def run_train(*, cfg, resume: bool = True, params_path: str | Path = paths.PARAMS,
              train_path: str | Path = paths.TRAIN_DATA, eval_path: str | Path = paths.EVAL_DATA,
              warmup_dir: str | Path = paths.WARMUP_DIR,
              checkpoint_dir: str | Path = paths.CHECKPOINT_DIR, trained_dir: str | Path = paths.TRAINED_DIR,
              metrics_path: str | Path = paths.TRAIN_METRICS, plot_path: str | Path = paths.TRAIN_PLOT,
              plot_figure_path: str | Path | None = None,
              heldout_plot_path: str | Path = paths.HELDOUT_PLOT,
              run_info_path: str | Path = paths.RUN_INFO, models_dir: str | Path = paths.MODELS_DIR,
              extra_tags: dict | None = None, run_name: str | None = None,
              log=print, progress: bool = True) -> dict:
    """Train (resuming when possible), export the weights and write metrics; returns metrics/train.json.

    `extra_tags` / `run_name` label the MLflow run (the study's `study`, `mode`, `seed` tags and `tarpo-s1` names).
    """
    check_tracking(cfg.tracking)
    from tarpo.data import DataError, read_prepared
    from tarpo.tracking import end_stale_run

    records = read_prepared(require_file(train_path, "prepare"))
    if not records:
        raise DataError(f"{train_path}: no records to train on; re-run `python cli.py prepare`")
    base, base_record = choose_base(cfg, warmup_dir, models_dir, log)
    checkpoint_dir = Path(checkpoint_dir)
    child = os.environ.get(LAUNCHED_ENV) == "1"
    digest = params_hash(cfg, train_path, warmup_dir, base_record)
    external = launched_externally()
    # the model and LoRA targets are built and checked before checkpoints/ is touched
    trainer, _ = build_trainer(cfg, records, base, checkpoint_dir, models_dir, log, params_hash=digest)
    evaluate_fn = heldout_evaluator(cfg, trainer.tokenizer, eval_path, log)
    stale_run = _checkpoint_run_id(checkpoint_dir)
    if not child and (not external or trainer.accelerator.is_main_process):
        probe_tracking(cfg.tracking, checkpoint_dir)  # everything that can fail, before checkpoints/ may be deleted
    if not child and not external:  # our launcher already did this before starting the processes
        prepare_checkpoints(checkpoint_dir, digest, resume, log)
    if external:  # started by the user's launcher (e.g. on several nodes): one process prepares, all wait
        if trainer.accelerator.is_main_process:
            prepare_checkpoints(checkpoint_dir, digest, resume, log)
        trainer.accelerator.wait_for_everyone()
    resumed = trainer.resume() if resume else False
    step_log = checkpoint_dir / STEP_LOG
    rows = _read_step_log(step_log, trainer.state.step, log)  # a bad log stops the stage before a run opens
    heldout_log = checkpoint_dir / HELDOUT_LOG
    heldout_rows = _read_step_log(heldout_log, trainer.state.step, log) if resumed else []
    main = trainer.accelerator.is_main_process
    tracker = None
    if main:
        from tarpo.tracking import default_run_name

        label = model_label(cfg.model)
        tags = {"stage": "train", "preset": cfg.model.preset or f"local:{cfg.model.path}", "params_hash": digest[:12],
                "model": label, "mode": cfg.router.mode, "seed": cfg.train.seed, **(extra_tags or {})}
        run_name = run_name or cfg.tracking.run_name or default_run_name(label, cfg.router.mode, cfg.train.seed,
                                                                         os.environ.get("DVC_EXP_NAME"))
        tracker = _open_train_run(cfg.tracking, trainer.state.run_id if resumed else None, tags, log, run_name)
        run_id = getattr(tracker, "run_id", None)
        if run_id:
            trainer.state.run_id = run_id
        if stale_run and stale_run != run_id:  # a killed run that is not continued must not stay RUNNING
            end_stale_run(cfg.tracking, stale_run)
        if not resumed:
            from tarpo.config import flatten_config

            tracker.log_params({**flatten_config(cfg), **{f"base.{k}": str(v) for k, v in base_record.items()
                                                          if k != "made_from"}})
            if Path(params_path).is_file():
                tracker.log_artifact(str(params_path))
            _link_upstream_stages(tracker)
        trainer.tracker = tracker
    if main:
        write_text_atomic(step_log, "".join(json.dumps(r) + "\n" for r in rows))
        write_text_atomic(heldout_log, "".join(json.dumps(r) + "\n" for r in heldout_rows))

    def on_step(step: int, metrics: dict) -> None:
        row = {"step": step, **{k: float(v) for k, v in metrics.items()}}
        if not cfg.reward.function:  # the built-in reward is 0/1 correctness (plus any overlong penalty)
            row.setdefault("accuracy", row.get("reward_mean", 0.0) - row.get("overlong_penalty_mean", 0.0))
        rows.append(row)
        with open(step_log, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(row) + "\n")

    def on_evaluate(step: int, metrics: dict) -> None:
        row = {"step": step, **metrics}
        heldout_rows[:] = [r for r in heldout_rows if r["step"] != step] + [row]
        with open(heldout_log, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(row) + "\n")
        log(f"step {step}: held-out avg@k {metrics.get('avg_at_k', float('nan')):.3f} "
            f"(soft ratio {metrics.get('soft_ratio', 0.0):.3f})")

    started = time.perf_counter()
    if not main:  # the main process publishes and tracks
        trainer.train(on_step=on_step, progress=progress, evaluate_fn=evaluate_fn, evaluate_every=cfg.eval.every or 0,
                      on_evaluate=on_evaluate)
        return {}
    from tarpo.tracking import TrackingUnavailable

    with closing_run(tracker):  # Ctrl-C or SIGTERM (cli.py turns it into KeyboardInterrupt) closes it as KILLED
        with _tracking_outages(tracker, trainer, checkpoint_dir):
            trainer.train(on_step=on_step, progress=progress, evaluate_fn=evaluate_fn,
                          evaluate_every=cfg.eval.every or 0, on_evaluate=on_evaluate)
        info = {"run_id": trainer.state.run_id, "params_hash": digest, "steps": trainer.state.step,
                "base": base_record, "tracking_uri": cfg.tracking.uri if cfg.tracking.enabled else None}
        metrics = {**summary_metrics(rows), **heldout_summary(heldout_rows), "resumed": int(resumed),
                   "train_seconds": time.perf_counter() - started}
        from tarpo.plots import save_png, train_figure

        curve = [{"step": r["step"], "eval_avg_at_k": r["avg_at_k"]} for r in heldout_rows if "avg_at_k" in r]
        figure = train_figure(rows + curve, f"TARPO training: {model_label(cfg.model)}, {cfg.router.mode}, "
                                            f"seed {cfg.train.seed}")
        figure_path = plot_figure_path or Path(plot_path).with_suffix(".png")  # beside the CSV
        # the model and run_info.json (which evaluate and register read the run id from) are one unit
        with publishing("train", [trained_dir, plot_path, heldout_plot_path, figure_path, metrics_path,
                                  run_info_path]) as outputs:
            staged = outputs.dir(trained_dir)
            trainer.export(staged)
            write_json_atomic(staged / paths.TRAINED_BASE, {k: info[k] for k in ("base", "run_id")})
            write_text_atomic(outputs.file(plot_path), _plot_csv(rows, plot_columns(cfg)))
            write_text_atomic(outputs.file(heldout_plot_path),
                              _plot_csv(sorted(heldout_rows, key=lambda r: r["step"]), HELDOUT_COLUMNS))
            save_png(figure, outputs.file(figure_path))
            write_json_atomic(outputs.file(metrics_path), metrics)
            write_json_atomic(outputs.file(run_info_path), info)
        try:
            tracker.log_artifact(str(plot_path))
            tracker.log_artifact(str(heldout_plot_path))
            tracker.log_artifact(str(figure_path), "plots")
            tracker.log_metrics({f"train/{k}": float(v) for k, v in metrics.items()})
        except TrackingUnavailable as exc:
            raise TrackingUnavailable(f"{exc}; training finished and {trained_dir}, {metrics_path} and {run_info_path} "
                                      "are written, only the run's final plots and metrics are not logged: fix the "
                                      "store and re-run `python cli.py train` (it resumes at the last step and logs "
                                      "them)") from None
    return metrics


@contextlib.contextmanager
def _tracking_outages(tracker, trainer, checkpoint_dir: Path):
    """While the trainer runs, a tracking failure only stops it after the step it is on is checkpointed; the line
    the user sees then says where training stopped and the two ways to go on."""
    from tarpo.tracking import TrackingUnavailable

    deferred = getattr(tracker, "deferred", None)
    with deferred() if deferred is not None else contextlib.nullcontext():
        try:
            yield
        except TrackingUnavailable as exc:
            step = trainer.state.step
            raise TrackingUnavailable(
                f"{exc}; training stopped at step {step}, checkpointed in {checkpoint_dir}/step-{step:06d}: fix the "
                "store and run `python cli.py train` to resume there, or resume without tracking: `python cli.py "
                "train --set tracking.enabled=false --set register.enabled=false`") from None
