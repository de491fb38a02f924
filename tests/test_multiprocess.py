"""Multi-process training on CPU: ``torchrun`` with 2 gloo processes trains like one process with the same global
batch; ``accelerate launch`` with ``configs/accelerate/ddp.yaml`` starts 2 processes; ``--cpu`` (one process
for N) is refused; the DeepSpeed JSON files pass the Trainer's own ``"auto"`` filling against prefpred's
training arguments. (DeepSpeed itself, NCCL and several GPUs cannot run here.)"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from prefpred.cli import app
from prefpred.data import write_pairs_jsonl
from prefpred.testing import planted_pairs
from prefpred.training import LLMModelConfig, TrainingConfig
from prefpred.training.trainer import check_launch, process_rank, training_arguments, world_size
from prefpred.types import ConfigError

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
STEPS = 3


def _env() -> dict[str, str]:
    """This environment without any launcher's variables, running the checkout's prefpred on one thread."""
    launcher = ("ACCELERATE_", "RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_", "PMI_", "OMPI_", "MV2_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(launcher)}
    env.update(PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               MPLBACKEND="Agg")
    return env


def _train_args(model_dir: Path, data: Path, out: Path, name: str, batch_size: int) -> list[str]:
    return ["train", "--config", str(CONFIGS / "tiny-cpu.yaml"), "--model", str(model_dir), "--data", str(data),
            "--out", str(out), "--name", name, "--max-steps", str(STEPS), "--set", "training.logging_steps=1",
            "--set", f"training.eval_steps={STEPS}", "--set", f"training.save_steps={STEPS}",
            "--set", f"training.batch_size={batch_size}", "--set", "model.max_length=256"]


def _rank_logs(log_dir: Path) -> dict[int, str]:
    """torchrun's per-rank stderr files (``<log-dir>/<run id>/attempt_0/<rank>/stderr.log``)."""
    out = {}
    for path in log_dir.rglob("stderr.log"):
        out[int(path.parent.name)] = path.read_text(encoding="utf-8", errors="replace")
    return out


def _train_losses(run: Path) -> list[tuple[int, float]]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["train_loss"]) for r in rows if r["kind"] == "train"]


@pytest.mark.slow
def test_torchrun_two_processes_train_like_one_process_with_the_same_global_batch(tiny_qwen_dir, tmp_path):
    data = tmp_path / "pairs.jsonl"
    write_pairs_jsonl(planted_pairs(30, seed=7), data)
    runs = tmp_path / "runs"
    # 2 processes x 4 pairs per micro-batch: each optimizer step averages the gradients of 8 pairs
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "--redirects", "3", "--log-dir", str(tmp_path / "logs"), "-m", "prefpred",
           *_train_args(tiny_qwen_dir, data, runs, "two", batch_size=4)]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300, cwd=tmp_path)
    logs = _rank_logs(tmp_path / "logs")
    assert proc.returncode == 0, proc.stderr[-3000:] + "\n".join(v[-3000:] for v in logs.values())

    # both ranks ran the job; only rank 0 wrote the run directory
    assert sorted(logs) == [0, 1]
    assert all("training pairs" in text for text in logs.values())
    assert "run written" in logs[0] and "run written" not in logs[1]
    two = runs / "two"
    metrics = json.loads((two / "metrics.json").read_text())
    assert metrics["training"]["world_size"] == 2 and metrics["training"]["global_step"] == STEPS

    # one process with 8 pairs per micro-batch sees the same pairs per step: the same losses, the same model
    result = CliRunner().invoke(app, _train_args(tiny_qwen_dir, data, runs, "one", batch_size=8))
    assert result.exit_code == 0, result.output
    one = runs / "one"
    assert json.loads((one / "metrics.json").read_text())["training"]["world_size"] == 1
    losses_one, losses_two = _train_losses(one), _train_losses(two)
    assert [s for s, _ in losses_two] == [s for s, _ in losses_one] == list(range(1, STEPS + 1))  # each step once
    np.testing.assert_allclose([v for _, v in losses_two], [v for _, v in losses_one], rtol=1e-4)
    assert losses_one[-1][1] < losses_one[0][1]  # it did learn something: the comparison is not of constants
    for part in ("holdout", "validation"):
        a, b = ((r / f"{part}.csv").read_text().splitlines() for r in (one, two))
        assert len(a) == len(b) > 1
        pa = np.array([[float(x) for x in line.split(",")[1:4]] for line in a[1:]])
        pb = np.array([[float(x) for x in line.split(",")[1:4]] for line in b[1:]])
        assert [line.split(",")[0] for line in a] == [line.split(",")[0] for line in b]
        np.testing.assert_allclose(pb, pa, atol=1e-4)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


PROBE = """
import json, os, sys
import torch
import torch.distributed as dist
from accelerate import PartialState
from prefpred.jobs import join_processes, leave_processes
join_processes("cpu")  # what `prefpred train` does first (TrainingArguments(use_cpu=True) for model.device cpu)
state = PartialState()
t = torch.ones(1) * (state.process_index + 1)
dist.all_reduce(t)
row = {"rank": state.process_index, "world": state.num_processes, "backend": dist.get_backend(), "sum": float(t)}
leave_processes()  # what `prefpred train` does last
row["left"] = not dist.is_initialized()
open(os.path.join(sys.argv[1], f"rank{state.process_index}.json"), "w").write(json.dumps(row))
"""


@pytest.mark.slow
def test_accelerate_launch_with_the_ddp_config_starts_two_cpu_processes(tmp_path):
    """Its launcher is torchrun (the same environment as the torchrun test above), so a probe of prefpred's
    join/leave steps suffices. Without the leave step a process could exit with SIGABRT from gloo's threads."""
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / "accelerate" / "ddp.yaml"),
           "--num_processes", "2", "--main_process_port", str(_free_port()), str(probe), str(tmp_path)]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["rank"] for r in rows] == [0, 1]
    assert all(r["world"] == 2 and r["backend"] == "gloo" and r["sum"] == 3.0 for r in rows)  # 1 + 2: both joined
    assert all(r["left"] for r in rows)  # the group is gone before exit: gloo cannot abort the interpreter


def test_accelerate_resolves_the_ddp_config_to_two_processes_and_cpu_to_one():
    """accelerate's own argument resolution: the config picks the torchrun launcher; ``--cpu`` the single one."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    parser = launch_command_parser()
    ddp = str(CONFIGS / "accelerate" / "ddp.yaml")
    args, _, _ = _validate_launch_command(parser.parse_args(["--config_file", ddp, "--num_processes", "2", "x.py"]))
    assert args.multi_gpu and not args.cpu and args.num_processes == 2 and args.num_machines == 1
    assert args.mixed_precision == "no"  # prefpred sets bf16/fp16 itself
    cpu, _, _ = _validate_launch_command(parser.parse_args(["--cpu", "--num_processes", "2", "x.py"]))
    assert cpu.cpu and not cpu.multi_gpu  # launch_command then runs simple_launcher: one process
    cfg = yaml.safe_load(Path(ddp).read_text())
    assert cfg["distributed_type"] == "MULTI_GPU" and cfg["num_machines"] == 1 and cfg["use_cpu"] is False


def test_the_single_process_cpu_launcher_is_refused(monkeypatch):
    for var in ("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("ACCELERATE_USE_CPU", "True")
    check_launch()  # `accelerate launch --cpu` with one process: no MASTER_ADDR, nothing to refuse
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")  # what `--cpu --num_processes 2` leaves for the others
    with pytest.raises(ConfigError, match="started 1 process.*torchrun --nproc_per_node"):
        check_launch()
    with pytest.raises(ConfigError, match="started 1 process"):
        training_arguments(TrainingConfig(), LLMModelConfig(name_or_path="x", device="cpu"), "unused", seed=0,
                           has_eval=False)
    monkeypatch.setenv("PMI_RANK", "1")  # under mpirun every process has its rank: fine
    monkeypatch.setenv("PMI_SIZE", "4")
    check_launch()
    assert process_rank() == 1 and world_size() == 4


# ----------------------------------------------------------------------------------------------- DeepSpeed
def _trainer_deepspeed_config(path: Path):
    """transformers' ``HfTrainerDeepSpeedConfig`` for ``path``, without needing deepspeed installed.

    With deepspeed present it is the real class; without, the same methods (``trainer_config_process`` /
    ``_finalize``, which fill the ``"auto"`` values from ``TrainingArguments``) on accelerate's config reader.
    """
    from accelerate.utils.deepspeed import HfDeepSpeedConfig
    from transformers.integrations import deepspeed as hf_ds

    if hf_ds.is_deepspeed_available():
        return hf_ds.HfTrainerDeepSpeedConfig(str(path))
    names = ("is_auto", "fill_match", "fill_only", "trainer_config_process", "trainer_config_finalize")
    cls = type("TrainerDeepSpeedConfig", (HfDeepSpeedConfig,),
               {n: hf_ds.HfTrainerDeepSpeedConfig.__dict__[n] for n in names})
    cfg = cls(str(path))
    cfg._dtype, cfg.mismatches = None, []
    return cfg


class _Args:
    """``TrainingArguments`` seen with another world size (the DeepSpeed batch sizes depend on it)."""

    def __init__(self, args, world: int):
        self._args, self.world_size = args, world

    def __getattr__(self, name):
        return getattr(self._args, name)


def _autos(node, prefix="") -> list[str]:
    if isinstance(node, dict):
        return [k for key, v in node.items() for k in _autos(v, f"{prefix}{key}.")]
    return [prefix.rstrip(".")] if node == "auto" else []


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_configs_fill_from_prefpreds_training_arguments(stage, tmp_path):
    import types

    from prefpred.training.trainer import _check_deepspeed

    path = CONFIGS / "deepspeed" / f"zero{stage}.json"
    raw = json.loads(path.read_text())
    assert raw["zero_optimization"]["stage"] == stage
    # no optimizer/scheduler section: the Trainer builds AdamW and the schedule from prefpred's training config
    assert "optimizer" not in raw and "scheduler" not in raw
    assert set(_autos(raw)) >= {"train_micro_batch_size_per_gpu", "gradient_accumulation_steps",
                                "train_batch_size", "gradient_clipping", "bf16.enabled", "fp16.enabled"}

    tcfg = TrainingConfig(batch_size=3, gradient_accumulation_steps=5, max_grad_norm=0.7, max_steps=10)
    mcfg = LLMModelConfig(name_or_path="x", device="cpu", method="lora")
    _check_deepspeed(str(path), mcfg)  # readable, and the stage suits the method
    args = training_arguments(tcfg, mcfg, tmp_path, seed=0, has_eval=False)  # deepspeed itself left out here
    model = types.SimpleNamespace(config=types.SimpleNamespace(hidden_size=64))
    for world in (1, 4):
        ds = _trainer_deepspeed_config(path)
        ds.trainer_config_process(_Args(args, world))
        ds.trainer_config_finalize(_Args(args, world), model, num_training_steps=10)  # raises on a mismatch
        assert _autos(ds.config) == [], "every 'auto' has a value the Trainer fills"
        assert ds.config["train_micro_batch_size_per_gpu"] == 3 and ds.config["gradient_accumulation_steps"] == 5
        assert ds.config["train_batch_size"] == 3 * 5 * world and ds.config["gradient_clipping"] == 0.7
        assert ds.config["bf16"]["enabled"] is False and ds.config["fp16"]["enabled"] is False  # CPU: fp32
        assert ds.config["zero_optimization"]["reduce_bucket_size"] == 64 * 64
    if stage == 3:
        with pytest.raises(ConfigError, match="ZeRO-3 cannot shard a 4-bit"):
            _check_deepspeed(str(path), LLMModelConfig(name_or_path="x", method="qlora"))


def test_a_broken_deepspeed_file_is_one_clear_error(tmp_path):
    from prefpred.training.trainer import _check_deepspeed

    mcfg = LLMModelConfig(name_or_path="x")
    with pytest.raises(ConfigError, match="file not found"):
        _check_deepspeed(str(tmp_path / "nope.json"), mcfg)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        _check_deepspeed(str(bad), mcfg)
