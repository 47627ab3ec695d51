"""Scale-out paths: micro-batch gradient sync, DeepSpeed through Accelerate, FSDP2 wrapping, FSDP2 vs DDP,
FSDP2 kill + resume, two machines on localhost.

The multi-process runs use the tiny driver under `accelerate launch` on CPU over gloo; FSDP2 is reached
through `train_driver.cpu_fsdp2_accelerator` (see its docstring for why Accelerate needs the nudge on CPU).
DeepSpeed needs CUDA: its test runs Accelerate's real DeepSpeed code paths against a fake engine.
"""

import argparse
import contextlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from accelerate import Accelerator
from accelerate.utils import DeepSpeedPlugin, DistributedType

from tarpo.checkpoint import list_checkpoints
from tarpo.trainer import TarpoTrainer
from train_driver import PROMPTS, build, reward_fn

ROOT = Path(__file__).resolve().parents[1]
DRIVER = Path(__file__).with_name("train_driver.py")


def free_port() -> int:
    """A TCP port nobody listens on now (fixed ports collide when test runs share a machine)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def driver_args(**overrides):
    values = dict(steps=1, prompts=4, micro_batch=4, new_tokens=4, lr=1e-2, router_lr=1e-2, beta=0.0, iterations=1,
                  aggregation="seq-mean", checkpoint_every=0, max_consecutive=None)
    return argparse.Namespace(**{**values, **overrides})


class RecordingAccelerator(Accelerator):
    """One CPU process that records where gradient sync is switched off and what each backward sees."""

    def __init__(self):
        super().__init__(cpu=True)
        self.events = []

    @contextlib.contextmanager
    def no_sync(self, model):
        self.events.append("no_sync")
        yield
        self.events.append("sync")

    def backward(self, loss, **kwargs):
        self.events.append(f"backward(boundary={self.sync_gradients})")
        super().backward(loss, **kwargs)


def test_micro_batches_skip_gradient_sync_until_the_last(tmp_path):
    policy, tokenizer, rollout_settings, settings = build(driver_args())  # 16 rows / micro-batch 4 = 4
    accelerator = RecordingAccelerator()
    trainer = TarpoTrainer(policy, tokenizer, PROMPTS, ["0"] * len(PROMPTS), reward_fn("first-even"),
                           settings=settings, rollout_settings=rollout_settings, output_dir=tmp_path,
                           accelerator=accelerator, log=lambda m: None)
    policy.register_forward_hook(lambda *a: accelerator.events.append("forward"))
    trainer.train_step()
    unsynced = ["no_sync", "forward", "sync", "no_sync", "backward(boundary=False)", "sync"]
    assert accelerator.events == unsynced * 3 + ["forward", "backward(boundary=True)"]
    assert accelerator.sync_gradients  # restored for whoever runs next


class FakeDeepSpeedEngine(torch.nn.Module):
    """Stands in for `deepspeed.DeepSpeedEngine` (needs CUDA): records what Accelerate asks of it."""

    def __init__(self, module, optimizer, config):
        super().__init__()
        self.module, self.optimizer, self.config, self.calls, self.boundary = module, optimizer, config, [], None

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    def set_gradient_accumulation_boundary(self, is_boundary):
        self.boundary = is_boundary

    def backward(self, loss):
        self.calls.append(f"backward(boundary={self.boundary})")
        (loss / self.config["gradient_accumulation_steps"]).backward()  # as DeepSpeed does (scale_wrt_gas)

    def step(self):
        self.calls.append("step")
        self.optimizer.step()
        self.optimizer.zero_grad()

    def get_global_grad_norm(self):
        return 1.0


@pytest.fixture
def deepspeed_accelerator(monkeypatch):
    """A one-process Accelerator on Accelerate's real DeepSpeed path, with a fake `deepspeed` module."""
    import importlib.machinery
    import types

    import accelerate.accelerator
    import torch.distributed as dist
    from accelerate import PartialState
    from accelerate.state import AcceleratorState, GradientState

    engines = []

    def initialize(model, config_params, optimizer=None, **kwargs):
        engines.append(FakeDeepSpeedEngine(model, optimizer, dict(config_params)))
        return engines[-1], optimizer, None, None

    fake = types.ModuleType("deepspeed")
    fake.__spec__ = importlib.machinery.ModuleSpec("deepspeed", None)  # find_spec("deepspeed") works on it
    fake.initialize = initialize
    fake.runtime = SimpleNamespace(lr_schedules=SimpleNamespace(VALID_LR_SCHEDULES=[]))
    monkeypatch.setitem(sys.modules, "deepspeed", fake)
    monkeypatch.setattr(accelerate.accelerator, "compare_versions", lambda *args: False)  # no deepspeed version
    from accelerate.utils import deepspeed as ds_utils  # names accelerator.py imports only if deepspeed is installed
    for name in ("DeepSpeedEngineWrapper", "DeepSpeedOptimizerWrapper", "DeepSpeedSchedulerWrapper", "DummyOptim",
                 "DummyScheduler", "map_pytorch_optim_to_deepspeed"):
        monkeypatch.setattr(accelerate.accelerator, name, getattr(ds_utils, name), raising=False)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    accelerator = Accelerator(cpu=True)
    PartialState().distributed_type = DistributedType.DEEPSPEED  # as AcceleratorState sets it on GPUs
    accelerator.state.distributed_type = DistributedType.DEEPSPEED
    accelerator.state.deepspeed_plugins = DeepSpeedPlugin(zero_stage=2)
    accelerator.deepspeed_engine_wrapped = None  # what Accelerator.__init__ sets under DeepSpeed
    yield accelerator, engines
    dist.destroy_process_group()
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def test_deepspeed_engine_steps_once_per_update_through_accelerate(tmp_path, deepspeed_accelerator):
    accelerator, engines = deepspeed_accelerator
    policy, tokenizer, rollout_settings, settings = build(driver_args(micro_batch=8))  # 16 rows: 2 micro-batches
    trainer = TarpoTrainer(policy, tokenizer, PROMPTS, ["0"] * len(PROMPTS), reward_fn("first-even"),
                           settings=settings, rollout_settings=rollout_settings, output_dir=tmp_path,
                           accelerator=accelerator, log=lambda m: None)
    [engine] = engines  # Accelerate 1.15 `prepare` with no dataloader went through
    assert trainer.module is engine and trainer.engine == "deepspeed"
    assert engine.config["train_micro_batch_size_per_gpu"] == 8 and engine.config["gradient_accumulation_steps"] == 2
    assert engine.config["gradient_clipping"] == settings.max_grad_norm
    before = [p.detach().clone() for p in policy.parameters() if p.requires_grad]
    metrics = trainer.train_step().metrics
    assert engine.calls == ["backward(boundary=False)", "backward(boundary=True)", "step"]
    assert metrics["grad_norm"] == 1.0  # the engine's, through accelerator.clip_grad_norm_
    assert any(not torch.equal(a, p) for a, p in zip(before, (p for p in policy.parameters() if p.requires_grad)))


def test_transformer_based_wrap_finds_the_decoder_blocks_through_the_policy():
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.fsdp_utils import fsdp2_prepare_auto_wrap_policy

    policy = build(driver_args())[0]
    assert policy._no_split_modules == ["Qwen2DecoderLayer"]
    plugin = FullyShardedDataParallelPlugin(fsdp_version=2, auto_wrap_policy="transformer_based_wrap")
    wrap = fsdp2_prepare_auto_wrap_policy(plugin, policy)
    wrapped = [name for name, module in policy.named_modules() if wrap(module)]
    assert wrapped == ["backbone.base_model.model.model.layers.0", "backbone.base_model.model.model.layers.1"]


def test_shipped_accelerate_configs_take_supported_paths():
    from accelerate.commands.config.config_args import load_config_from_file

    paths = sorted((ROOT / "configs" / "accelerate").glob("*.yaml"))
    configs = {path.stem: load_config_from_file(str(path)) for path in paths}
    assert set(configs) == {"single_gpu", "multi_gpu", "multi_node", "fsdp", "deepspeed_zero2"}
    fsdp = configs["fsdp"].fsdp_config
    assert fsdp["fsdp_version"] == 2 and fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert int(configs["deepspeed_zero2"].deepspeed_config["zero_stage"]) <= 2
    assert configs["multi_node"].num_machines == 2


# ------------------------------------------------------------------------ two CPU processes over gloo
COMMON = ("--steps", 3, "--micro-batch", 4, "--checkpoint-every", 2)  # 8 local rows: 2 micro-batches


def launch(out: Path, *args, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(free_port()), str(DRIVER), "--out", str(out), *map(str, args)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"launch failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def steps_logged(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "steps-rank0.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    launch(out, *COMMON)
    return out


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp")
    launch(out, *COMMON, "--fsdp")
    return out


@pytest.mark.slow
def test_fsdp2_trains_to_the_parameters_of_ddp(ddp_run, fsdp_run):
    ddp, fsdp = torch.load(ddp_run / "params-rank0.pt"), torch.load(fsdp_run / "params-rank0.pt")
    assert torch.equal(fsdp, torch.load(fsdp_run / "params-rank1.pt"))
    # same rollouts, same gradients up to reduction order; Adam (lr 1e-2) amplifies last-bit differences
    # in near-zero gradients, so after 3 steps parameters agree to ~1e-4 while each step moves them ~1e-2
    assert (ddp - fsdp).abs().max().item() < 1e-3
    ddp_rows, fsdp_rows = steps_logged(ddp_run), steps_logged(fsdp_run)
    assert [r["reward_mean"] for r in ddp_rows] == [r["reward_mean"] for r in fsdp_rows]
    assert fsdp_rows[0]["grad_norm"] == pytest.approx(ddp_rows[0]["grad_norm"], rel=1e-5)
    saved = json.loads((fsdp_run / "checkpoints" / "step-000003" / "trainer_state.json").read_text())
    assert saved["saved_by"] == {"world_size": 2, "engine": "fsdp2"}
    assert {"rng-rank0.pt", "rng-rank1.pt"} <= {p.name for p in (fsdp_run / "checkpoints" / "step-000003").iterdir()}


@pytest.mark.slow
def test_sigkilled_fsdp2_run_resumes_exactly(fsdp_run, tmp_path):
    killed = launch(tmp_path, *COMMON, "--fsdp", "--kill-after", 2, check=False)
    assert killed.returncode != 0
    assert [c.name for c in list_checkpoints(tmp_path / "checkpoints")] == ["step-000002"]
    launch(tmp_path, *COMMON, "--fsdp", "--resume")
    assert [r["step"] for r in steps_logged(tmp_path)] == [1, 2, 3]
    assert torch.equal(torch.load(tmp_path / "params-rank0.pt"), torch.load(fsdp_run / "params-rank0.pt"))
    assert [r["reward_mean"] for r in steps_logged(tmp_path)] == [r["reward_mean"] for r in steps_logged(fsdp_run)]


@pytest.mark.slow
def test_two_machines_on_localhost_train_to_the_parameters_of_one_machine(ddp_run, tmp_path):
    """`accelerate launch --num_machines 2`, one process per "machine", rendezvous over 127.0.0.1 (gloo)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    port = free_port()
    machines = [subprocess.Popen(
        [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_machines", "2",
         "--num_processes", "2", "--machine_rank", str(rank), "--main_process_ip", "127.0.0.1",
         "--main_process_port", str(port), "--mixed_precision", "no", "--dynamo_backend", "no",
         str(DRIVER), "--out", str(tmp_path), *map(str, COMMON)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env) for rank in (0, 1)]
    errors = [machine.communicate(timeout=600)[1] for machine in machines]
    assert [m.returncode for m in machines] == [0, 0], errors[0][-2000:] + errors[1][-2000:]
    one_machine = torch.load(ddp_run / "params-rank0.pt")
    assert torch.equal(torch.load(tmp_path / "params-rank0.pt"), one_machine)
    assert torch.equal(torch.load(tmp_path / "params-rank1.pt"), one_machine)
    assert [r["reward_mean"] for r in steps_logged(tmp_path)] == [r["reward_mean"] for r in steps_logged(ddp_run)]
    assert list_checkpoints(tmp_path / "checkpoints")[-1].name == "step-000003"
