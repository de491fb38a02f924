"""Checks of the paths that need a GPU, for a one-GPU machine with no network: prints PASS / FAIL / SKIP lines.

Run from the repository root (nothing is downloaded; the model is a tiny random one written on the spot):

    python bench/device_check.py                # all checks, about 2-4 minutes on one H200
    python bench/device_check.py --only judge   # some of them (names below)

Checks, each on its own so one failure does not hide the others:

* ``deps``: which of the packages the checks need (torch, transformers, peft, accelerate, tokenizers, numpy,
  pandas, scikit-learn, matplotlib, pyyaml, typer, rich, tqdm) are missing, and whether the optional
  bitsandbytes, deepspeed and vllm are there (they only enable their own checks); then prefpred's training,
  judging and CLI modules import;
* ``cuda``: a GPU is visible, its name, bf16 support, a bf16 matmul;
* ``train-bf16``: LoRA fine-tuning a tiny random Qwen2 for a few steps on ``cuda`` with bf16 autocast (loss
  finite, steps done), then its predictions on cuda against the same weights on CPU in fp32;
* ``judge``: zero-shot judging on ``cuda`` (bf16, shared-prefix cache, swap averaging) vs CPU fp32;
* ``judge-2proc``: the same judge with 2 data-parallel worker processes sharing the one GPU, vs 1 process;
* ``qlora`` (needs bitsandbytes): QLoRA (4-bit base) training for a few steps on cuda;
* ``train-cli``: ``prefpred train --device cuda`` end to end (run directory, metrics.json, report);
* ``torchrun``: ``torchrun --nproc_per_node 2`` training. Two NCCL ranks cannot share one GPU, so on a single
  GPU this runs the two ranks on CPU over gloo (what CI does); with 2+ GPUs it uses ``cuda``;
* ``deepspeed`` (needs deepspeed): ZeRO-2 training, 1 process under torchrun, on cuda;
* ``vllm`` (needs vllm): the vLLM engine judging the tiny model, built once, vs the transformers engine.

Exit code 1 when any check FAILs. Numbers printed are wall-clock seconds of each check.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

NEEDED = ("torch", "transformers", "peft", "accelerate", "tokenizers", "numpy", "pandas", "sklearn", "matplotlib",
          "yaml", "typer", "rich", "tqdm")
OPTIONAL = ("bitsandbytes", "deepspeed", "vllm")
RESULTS: list[tuple[str, str, str]] = []


class Skip(Exception):
    """A check that cannot run here (missing package or hardware)."""


def report(name: str, status: str, detail: str = "") -> None:
    RESULTS.append((name, status, detail))
    print(f"{status:4} {name:12} {detail}", flush=True)


def have(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def run_check(name: str, fn, *args) -> None:
    start = time.perf_counter()
    try:
        detail = fn(*args) or ""
    except Skip as e:
        report(name, "SKIP", str(e))
    except Exception as e:  # noqa: BLE001 - every failure is reported, then the next check runs
        tb = traceback.format_exc(limit=6).strip().splitlines()
        report(name, "FAIL", f"{type(e).__name__}: {e}".replace("\n", " ")[:400])
        print("     " + "\n     ".join(tb[-8:]), flush=True)
    else:
        report(name, "PASS", f"{time.perf_counter() - start:.1f}s {detail}")


# ----------------------------------------------------------------------------------------------- checks
def check_deps() -> str:
    missing = [m for m in NEEDED if not have(m)]
    optional = {m: have(m) for m in OPTIONAL}
    if have("torch"):
        import torch

        versions = f"torch {torch.__version__} (cuda {torch.version.cuda})"
    else:
        versions = "no torch"
    note = f"{versions}; optional: " + ", ".join(f"{m} {'yes' if ok else 'no'}" for m, ok in optional.items())
    if missing:
        raise RuntimeError(f"missing {', '.join(missing)} (pip install them); {note}")
    import prefpred.cli  # noqa: F401
    import prefpred.models.judge  # noqa: F401
    import prefpred.models.llm  # noqa: F401
    import prefpred.training.job  # noqa: F401

    return note


def _need(*modules: str) -> None:
    missing = [m for m in modules if not have(m)]
    if missing:
        raise Skip(f"not installed: {', '.join(missing)}")


def _need_cuda() -> None:
    _need("torch")
    import torch

    if not torch.cuda.is_available():
        raise Skip("no CUDA device visible")


def check_cuda() -> str:
    _need_cuda()
    import torch

    x = torch.randn(256, 256, device="cuda", dtype=torch.bfloat16)
    y = (x @ x).float().sum().item()
    if y != y:  # NaN
        raise RuntimeError("bf16 matmul gave NaN")
    return (f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}, bf16 "
            f"{'yes' if torch.cuda.is_bf16_supported() else 'no'}")


def _tiny(work: Path) -> Path:
    from prefpred.training.tiny import write_tiny_model

    path = work / "tiny-qwen2"
    if not path.is_dir():
        write_tiny_model(path, "qwen2")
    return path


def _pairs(n: int, seed: int):
    from prefpred.testing import planted_pairs

    return planted_pairs(n, seed=seed)


def _fit(model_dir: Path, device: str, dtype: str, method: str = "lora", head: str = "label-token", steps: int = 6):
    from prefpred.inference import InferenceConfig
    from prefpred.models.llm import LLMPreferenceModel
    from prefpred.training import LLMModelConfig, LoRAConfig, TrainingConfig

    mcfg = LLMModelConfig(name_or_path=str(model_dir), head=head, style="seed-digits", method=method,
                          device=device, dtype=dtype, max_length=256, lora=LoRAConfig(r=4, alpha=8, dropout=0.0))
    tcfg = TrainingConfig(learning_rate=1e-2, max_steps=steps, batch_size=4, logging_steps=1, save_steps=1000,
                          warmup_steps=0, early_stopping_patience=None)
    model = LLMPreferenceModel(mcfg, tcfg, seed=0, inference=InferenceConfig(max_length=256, progress=False))
    return model.fit(_pairs(16, seed=1))


def _losses(model) -> list[float]:
    return [r["train_loss"] for r in model.history_ if r.get("kind") == "train" and r.get("train_loss") is not None]


def check_train_bf16(work: Path) -> str:
    _need_cuda()
    _need("peft")
    import numpy as np
    import torch

    from prefpred.training.trainer import mixed_precision

    model = _fit(_tiny(work), "cuda", "bfloat16")
    bf16, _ = mixed_precision(model.model_config)
    losses = _losses(model)
    if model.training_result_.global_step != 6 or not losses or not all(np.isfinite(losses)):
        raise RuntimeError(f"steps {model.training_result_.global_step}, losses {losses}")
    if not bf16:
        raise RuntimeError("bf16 autocast was not switched on for a cuda bfloat16 model")
    if next(model.model_.parameters()).device.type != "cuda":
        raise RuntimeError("the trained model is not on cuda")
    pairs = _pairs(6, seed=2)
    on_gpu = model.predict_proba(pairs)
    model.save(work / "bf16-model")
    from prefpred.models.llm import LLMPreferenceModel

    on_cpu = LLMPreferenceModel.load(work / "bf16-model", device="cpu").predict_proba(pairs)
    diff = float(np.abs(on_gpu - on_cpu).max())
    if diff > 0.05:
        raise RuntimeError(f"cuda bf16 vs cpu predictions differ by {diff:.4f}")
    peak = torch.cuda.max_memory_allocated() / 2**20
    return f"loss {losses[0]:.3f} -> {losses[-1]:.3f}, cuda-vs-cpu max diff {diff:.4f}, peak {peak:.0f} MB"


def _judge(model_dir: Path, device: str, dtype: str, processes: int = 1):
    from prefpred.models.judge import ZeroShotJudge

    return ZeroShotJudge(model=str(model_dir), style="seed-digits", max_length=256, device=device, dtype=dtype,
                         num_processes=processes)


def check_judge(work: Path) -> str:
    _need_cuda()
    import numpy as np

    pairs = _pairs(24, seed=3)
    gpu = _judge(_tiny(work), "cuda", "bfloat16")
    p_gpu = gpu.predict_proba(pairs)
    stats = gpu.inference_stats_
    p_cpu = _judge(_tiny(work), "cpu", "float32").predict_proba(pairs)
    diff = float(np.abs(p_gpu - p_cpu).max())
    if not np.allclose(p_gpu.sum(axis=1), 1.0, atol=1e-6) or diff > 0.05:
        raise RuntimeError(f"cuda bf16 vs cpu fp32 max diff {diff:.4f}")
    if "cuda" not in stats["device"]:
        raise RuntimeError(f"scored on {stats['device']}")
    return (f"max diff vs cpu {diff:.4f}, {stats['pairs_per_s']:.0f} pairs/s, prefix cache "
            f"{stats['prefix_tokens']} tokens, peak {stats['peak_memory_mb']:.0f} MB")


def check_judge_2proc(work: Path) -> str:
    _need_cuda()
    import numpy as np

    pairs = _pairs(15, seed=4)
    one = _judge(_tiny(work), "cuda", "float32").predict_proba(pairs)
    judge = _judge(_tiny(work), "cuda", "float32", processes=2)
    two = judge.predict_proba(pairs)
    diff = float(np.abs(one - two).max())
    if diff > 1e-4 or judge.inference_stats_["processes"] != 2:
        raise RuntimeError(f"2 processes vs 1: max diff {diff:.2e}, stats {judge.inference_stats_}")
    return f"2 workers on {judge.inference_stats_['device']}, max diff vs 1 process {diff:.1e}"


def check_qlora(work: Path) -> str:
    _need_cuda()
    _need("bitsandbytes", "peft")
    import numpy as np

    model = _fit(_tiny(work), "cuda", "bfloat16", method="qlora", steps=4)
    losses = _losses(model)
    if model.training_result_.global_step != 4 or not all(np.isfinite(losses)):
        raise RuntimeError(f"steps {model.training_result_.global_step}, losses {losses}")
    return f"loss {losses[0]:.3f} -> {losses[-1]:.3f}"


def _write_data(work: Path) -> Path:
    from prefpred.data import write_pairs_jsonl

    path = work / "pairs.jsonl"
    if not path.is_file():
        write_pairs_jsonl(_pairs(40, seed=5), path)
    return path


def _train_cmd(work: Path, name: str, device: str, *extra: str) -> list[str]:
    return ["-m", "prefpred", "train", "--config", str(ROOT / "configs" / "tiny-cpu.yaml"), "--model",
            str(_tiny(work)), "--data", str(_write_data(work)), "--out", str(work / "runs"), "--name", name,
            "--max-steps", "4", "--device", device, "--set", "training.eval_steps=2", "--set",
            "training.save_steps=2", "--set", "model.max_length=256", *extra]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _run(cmd: list[str], timeout: int) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"exit {proc.returncode}: {(proc.stderr or proc.stdout)[-1500:]}")
    return proc


def _metrics(work: Path, name: str) -> dict:
    return json.loads((work / "runs" / name / "metrics.json").read_text())


def check_train_cli(work: Path) -> str:
    _need_cuda()
    _run([sys.executable, *_train_cmd(work, "cli-cuda", "cuda", "--set", "model.dtype=bfloat16")], 600)
    m = _metrics(work, "cli-cuda")
    if m["training"]["global_step"] != 4 or not (work / "runs" / "cli-cuda" / "report.md").is_file():
        raise RuntimeError(f"global_step {m['training']['global_step']}")
    return f"holdout log loss {m['headline']['holdout_log_loss']:.4f}"


def check_torchrun(work: Path) -> str:
    _need("torch", "peft")
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    device = "cuda" if gpus >= 2 else "cpu"
    env_note = "2 GPUs, nccl" if device == "cuda" else "cpu, gloo (2 NCCL ranks cannot share one GPU)"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           *_train_cmd(work, f"torchrun-{device}", device)]
    _run(cmd, 600)
    m = _metrics(work, f"torchrun-{device}")
    if m["training"].get("world_size") != 2 or m["training"]["global_step"] != 4:
        raise RuntimeError(f"world_size {m['training'].get('world_size')}, steps {m['training']['global_step']}")
    return f"world_size 2 on {env_note}"


def check_deepspeed(work: Path) -> str:
    _need_cuda()
    _need("deepspeed")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
           *_train_cmd(work, "deepspeed", "cuda", "--set",
                       f"training.deepspeed={ROOT / 'configs' / 'deepspeed' / 'zero2.json'}")]
    _run(cmd, 600)
    m = _metrics(work, "deepspeed")
    if m["training"]["global_step"] != 4:
        raise RuntimeError(f"global_step {m['training']['global_step']}")
    return "ZeRO-2, 1 process"


def check_vllm(work: Path) -> str:
    _need_cuda()
    _need("vllm")
    import numpy as np

    from prefpred.inference import InferenceConfig, VLLMEngine, score_pairs
    from prefpred.prompts import get_style

    judge = _judge(_tiny(work), "cuda", "float32")
    pairs = _pairs(12, seed=6)
    hf_probs = judge.predict_proba(pairs)
    engine = VLLMEngine(str(_tiny(work)), InferenceConfig(max_length=256),
                        {"gpu_memory_utilization": 0.3, "dtype": "float32", "enforce_eager": True})
    cfg = InferenceConfig(max_length=256, engine="vllm", progress=False)
    style, tok = get_style("seed-digits"), judge.load_tokenizer()
    first = score_pairs(pairs, engine, tok, style, config=cfg)
    llm = engine.get_llm()
    again = score_pairs(pairs, engine, tok, style, config=cfg)
    if engine.get_llm() is not llm:
        raise RuntimeError("the vLLM engine was built twice")
    diff = float(np.abs(first - hf_probs).max())
    if diff > 0.02 or float(np.abs(first - again).max()) > 1e-6:
        raise RuntimeError(f"vllm vs transformers max diff {diff:.4f}")
    return f"vllm vs transformers max diff {diff:.4f}"


CHECKS = {
    "deps": check_deps, "cuda": check_cuda, "train-bf16": check_train_bf16, "judge": check_judge,
    "judge-2proc": check_judge_2proc, "qlora": check_qlora, "train-cli": check_train_cli,
    "torchrun": check_torchrun, "deepspeed": check_deepspeed, "vllm": check_vllm,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="*", choices=sorted(CHECKS), help="Run only these checks.")
    parser.add_argument("--keep", action="store_true", help="Keep the work folder (printed at the end).")
    args = parser.parse_args(argv)
    names = args.only or list(CHECKS)
    work = Path(tempfile.mkdtemp(prefix="prefpred-device-check-"))
    print(f"prefpred device check in {work} (python {sys.version.split()[0]})", flush=True)
    run_check("deps", check_deps)
    needed_missing = RESULTS[-1][1] == "FAIL"
    for name in names:
        if name == "deps":
            continue
        if needed_missing:
            report(name, "SKIP", "needed packages missing (see deps)")
            continue
        if name == "cuda":
            run_check(name, CHECKS[name])
        else:
            run_check(name, CHECKS[name], work)
    failed = [n for n, s, _ in RESULTS if s == "FAIL"]
    print(f"SUMMARY {sum(s == 'PASS' for _, s, _ in RESULTS)} passed, {len(failed)} failed, "
          f"{sum(s == 'SKIP' for _, s, _ in RESULTS)} skipped" + (f" (failed: {', '.join(failed)})" if failed else ""))
    if args.keep:
        print(f"work folder kept: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
