"""The Dockerfile's build arguments and scripts/docker_build_and_run.sh, checked without building anything.

A real build takes minutes and a network (README "Docker" has the measured run); here the script runs with
--dry-run, which prints every command it would run, and the tests check those commands against the Dockerfile
(every --build-arg is an ARG there, the base is one) and the short profile against the params schema.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from tarpo.config import load_config

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "docker_build_and_run.sh"


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, comments dropped and continuation lines joined."""
    text = re.sub(r"\\\n", " ", "\n".join(line for line in dockerfile.read_text().splitlines()
                                           if not line.lstrip().startswith("#")))
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line.strip() else "")
            for line in text.splitlines() if line.strip()]


def dry_run(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "WORK": str(tmp_path / "work"), "RUN_UID": "4321", "RUN_GID": "4321", "CA_CERT": "",
                "ENGINE_OPTS": "", **env}
    for key in ("BASE_IMAGE", "IMAGE", "SHORT_SETS"):
        if key not in env:
            full_env.pop(key, None)
    return subprocess.run(["bash", str(SCRIPT), "--dry-run"], env=full_env, capture_output=True, text=True,
                          timeout=60)


def commands(result: subprocess.CompletedProcess) -> list[list[str]]:
    return [shlex.split(line[2:].split("   (")[0]) for line in result.stderr.splitlines() if line.startswith("+ ")]


def test_dockerfile_base_is_a_build_arg_defaulting_to_cuda():
    steps = instructions(ROOT / "Dockerfile")
    assert steps[0][0] == "ARG" and steps[0][1].startswith("BASE_IMAGE=nvidia/cuda:")
    assert steps[1] == ("FROM", "${BASE_IMAGE}")
    assert [name for name, _ in steps].count("FROM") == 1


def test_dockerfile_pip_args_are_empty_by_default_and_declared_before_pip():
    steps = instructions(ROOT / "Dockerfile")
    pip_at = next(i for i, (name, args) in enumerate(steps) if name == "RUN" and "pip install" in args)
    args = {a.split("=", 1)[0]: a.split("=", 1)[1] for name, a in steps[2:pip_at] if name == "ARG"}
    # empty = pip's defaults (PyPI), so a GPU user's plain `docker build` gets the CUDA torch
    assert args == {"PIP_FIND_LINKS": '""', "PIP_INDEX_URL": '""', "PIP_CERT": '""'}
    assert not any(name == "ENV" and "PIP_FIND_LINKS" in a for name, a in steps)


def test_script_passes_shellcheck_and_bash_syntax():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (Debian: apt-get install shellcheck)")
    result = subprocess.run(["shellcheck", str(SCRIPT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_dry_run_builds_on_the_local_base_with_the_wheels_and_runs_as_the_user(tmp_path):
    wheels, ca = tmp_path / "wheels", tmp_path / "ca.crt"
    wheels.mkdir()
    ca.write_text("a CA bundle\n")
    result = dry_run(tmp_path, WHEELS=str(wheels), CA_CERT=str(ca))
    assert result.returncode == 0, result.stderr
    cmds = commands(result)
    build = next(c for c in cmds if c[:2] == ["podman", "build"])
    build_args = dict(build[i + 1].split("=", 1) for i, a in enumerate(build) if a == "--build-arg")
    declared = {args.split("=", 1)[0] for name, args in instructions(ROOT / "Dockerfile") if name == "ARG"}
    assert set(build_args) <= declared  # a misspelt --build-arg is silently ignored by the builder
    assert build_args == {"BASE_IMAGE": "localhost/tarpo-base:bookworm", "PIP_FIND_LINKS": "/opt/local-wheels",
                          "PIP_CERT": "/opt/host-ca.crt"}
    assert f"{wheels}:/opt/local-wheels:ro" in build and f"{ca}:/opt/host-ca.crt:ro" in build
    assert any(c[0] == "debootstrap" for c in cmds)
    runs = [c for c in cmds if c[:2] == ["podman", "run"]]
    assert len(runs) == 4 and all(c[c.index("--user") + 1] == "4321:4321" for c in runs)
    assert all(f"{tmp_path / 'work' / 'clone'}:/workspace" in c for c in runs)
    after_image = [c[c.index("localhost/tarpo:local") + 1:] for c in runs]
    assert [c[:3] for c in after_image] == [[], ["python", "cli.py", "--help"], ["dvc", "exp", "run"], ["dvc", "repro"]]


def test_dry_run_without_wheels_leaves_pip_on_pypi(tmp_path):
    result = dry_run(tmp_path, WHEELS="", BASE_IMAGE="localhost/tarpo-base:bookworm")
    assert result.returncode == 0, result.stderr
    build = next(c for c in commands(result) if c[:2] == ["podman", "build"])
    assert not any(a.startswith(("PIP_FIND_LINKS", "PIP_CERT")) for a in build) and "--volume" not in build


def test_short_profile_is_valid_params(tmp_path):
    run = next(c for c in commands(dry_run(tmp_path, WHEELS="")) if c[:2] == ["podman", "run"] and "-S" in c)
    sets = [run[i + 1] for i, a in enumerate(run) if a == "-S"]
    cfg = load_config(ROOT / "params.yaml", sets)
    assert (cfg.train.steps, cfg.warmup.steps, cfg.eval.every) == (4, 20, 0)


@pytest.mark.parametrize(("env", "message"), [({"WHEELS": "/no/such/dir"}, "WHEELS=/no/such/dir"),
                                              ({"RUN_UID": "me"}, "RUN_UID=me"),
                                              ({"CA_CERT": "/no/such.crt"}, "CA_CERT=/no/such.crt")])
def test_bad_settings_stop_with_one_line_and_exit_2(tmp_path, env, message):
    result = dry_run(tmp_path, **env)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith(f"docker_build_and_run.sh: {message}")
    assert not (tmp_path / "work").exists()


def test_engine_and_container_options_reach_build_and_every_run(tmp_path):
    result = dry_run(tmp_path, WHEELS="", ENGINE_OPTS="--runtime runc", CONTAINER_OPTS="--ulimit nofile=99:99")
    assert result.returncode == 0, result.stderr
    engine_cmds = [c for c in commands(result) if c[0] == "podman" and c[1:3] == ["--runtime", "runc"]]
    assert [c[3] for c in engine_cmds] == ["build", "run", "run", "run", "run"]
    assert all(c[4:6] == ["--ulimit", "nofile=99:99"] for c in engine_cmds)
