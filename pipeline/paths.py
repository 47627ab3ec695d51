"""Every path a stage reads or writes, defined once; dvc.yaml names the same strings (a test compares them)."""

from __future__ import annotations

PARAMS = "params.yaml"

# prepare
PREPARED_DIR = "data/prepared"
TRAIN_DATA = f"{PREPARED_DIR}/train.jsonl"
EVAL_DATA = f"{PREPARED_DIR}/eval.jsonl"
PREPARE_METRICS = "metrics/prepare.json"

# warmup
WARMUP_DIR = "models/warmup"                 # HF model dir, or only WARMUP_MARKER when the stage was skipped
WARMUP_MARKER = "warmup.json"                # inside WARMUP_DIR: {"ran": bool, ...}
WARMUP_METRICS = "metrics/warmup.json"
WARMUP_PLOT = "plots/warmup.csv"

# train
CHECKPOINT_DIR = "checkpoints"               # persistent: a killed train run resumes from here
TRAINED_DIR = "models/tarpo"                 # adapter + routers (+ base reference), written atomically
TRAINED_BASE = "base.json"                   # inside TRAINED_DIR: the start weights really loaded
TRAIN_METRICS = "metrics/train.json"
TRAIN_PLOT = "plots/train.csv"
HELDOUT_PLOT = "plots/heldout.csv"           # held-out avg@k during training (eval.every)
TRAIN_FIGURE = "plots/train.png"             # the same curves as a PNG (offline; also logged to MLflow)
RUN_INFO = "outputs/run_info.json"           # tracking run id + params hash for evaluate / register

# evaluate
EVAL_METRICS = "metrics/eval.json"
EVAL_DIR = "eval"                            # per-problem jsonl files
EVAL_PLOT = "plots/eval.csv"
EVAL_FIGURE = "plots/eval.png"
EVAL_SET = "eval_set.json"                   # inside EVAL_DIR: which problems and settings (hash) were evaluated
SINGLE_EVAL_DIR = "outputs/eval"             # `evaluate --model NAME`: <dir>/<name>/{metrics.json,completions.jsonl}

# register
REGISTER_INFO = "metrics/register.json"

MODELS_DIR = "models"                        # presets materialised by `models pull` / built tiny

# the workspace itself (never DVC outputs; ignored by git)
LOCK_FILE = ".tarpo.lock"                    # one writer per workspace: who holds it (pipeline/lock.py)
PUBLISH_DIR = ".tarpo-publish"               # journals of output sets being published (pipeline/publish.py)
