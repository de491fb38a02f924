"""Typed configs from one source: pydantic checks the annotations, errors are one line naming the dotted key
(and the file), ``--set`` has one parser, and the CLI's defaults and choices cannot drift from the configs."""

from __future__ import annotations

import inspect
import re
import typing

import pytest
import typer
from typer.testing import CliRunner

from prefpred.cli import app
from prefpred.config import from_dict, load_config, parse_set, save_config
from prefpred.experiment import ExperimentConfig, parse_set_options
from prefpred.models.cpu import CPUModelConfig
from prefpred.pipeline import RunConfig
from prefpred.splits import SplitConfig
from prefpred.training.config import LLMModelConfig, LoRAConfig
from prefpred.training.job import TrainConfig
from prefpred.types import ConfigError

runner = CliRunner()
COMMANDS = typer.main.get_command(app).commands


def test_unknown_nested_key_names_the_dotted_key_and_the_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  lora:\n    rank: 8\n")
    with pytest.raises(ConfigError) as exc:
        load_config(TrainConfig, path)
    assert str(exc.value) == (f"{path}: unknown config key model.lora.rank (known: alpha, dropout, r, "
                              "target_modules)")
    with pytest.raises(ConfigError, match="unknown config key inference.max_len "):  # a stdlib dataclass inside
        from_dict(TrainConfig, {"inference": {"max_len": 3}})


@pytest.mark.parametrize("cls, data, message", [
    (TrainConfig, {"model": {"head": "regression"}},
     "model.head: input should be 'label-token' or 'classifier', got 'regression'"),
    (TrainConfig, {"training": {"batch_size": 0}}, "training.batch_size: input should be greater than or equal to 1"),
    (TrainConfig, {"model": {"device": "gpu"}}, "model.device: not a device: 'gpu'"),
    (TrainConfig, {"model": {"dtype": "int8"}}, "model.dtype: input should be"),
    (RunConfig, {"calibration_method": "platt"}, "calibration_method: input should be 'temperature', 'bias'"),
    (RunConfig, {"split": {"group_by": "model"}}, "split.group_by: input should be 'prompt' or 'none'"),
    (RunConfig, {"data": {"limit": 0}}, "data.limit: input should be greater than or equal to 1"),
    (RunConfig, {"model": {"subsample": 1.5}}, "model.subsample: input should be less than or equal to 1"),
    (RunConfig, {"name": "a/b"}, "name: run name must be a plain folder name, got 'a/b'"),
    (RunConfig, {"seed": "x"}, "seed: input should be a valid integer"),
    (ExperimentConfig, {"validation_fraction": 1.0}, "validation_fraction: input should be less than 1"),
    (ExperimentConfig, {"bootstrap_samples": -1}, "bootstrap_samples: input should be greater than or equal to 0"),
    (TrainConfig, {"validation_fold": 5}, "validation_fold must be in [0, 5), got 5"),
])
def test_bad_values_are_one_line_with_the_key(cls, data, message):
    with pytest.raises(ConfigError) as exc:
        from_dict(cls, data)
    assert message in str(exc.value) and "\n" not in str(exc.value)


def test_configs_built_in_code_are_checked_too():
    for build, message in ((lambda: CPUModelConfig(learning_rate=0), "CPUModelConfig.learning_rate"),
                           (lambda: SplitConfig(n_folds=1), "SplitConfig.n_folds"),
                           (lambda: LoRAConfig(dropout=1.0), "LoRAConfig.dropout"),
                           (lambda: LLMModelConfig(method="adapters"), "LLMModelConfig.method"),
                           (lambda: RunConfig(name=".."), "plain folder name")):
        with pytest.raises(ConfigError, match=re.escape(message)):
            build()


def test_yaml_scalars_are_converted_and_configs_round_trip(tmp_path):
    cfg = from_dict(TrainConfig, {"name": 2024, "seed": "7", "training": {"swap_augment": "false",
                                                                        "learning_rate": "1e-4"}})
    assert cfg.name == "2024" and cfg.seed == 7 and cfg.training.swap_augment is False
    assert cfg.training.learning_rate == pytest.approx(1e-4)
    for config in (cfg, RunConfig(name="r"), ExperimentConfig(name="e")):
        save_config(config, tmp_path / "c.yaml")
        assert load_config(type(config), tmp_path / "c.yaml") == config


def test_one_set_parser():
    assert parse_set_options is parse_set
    assert parse_set(["model.lora.r=8", "model.lora.target_modules=[q_proj, v_proj]", "zero_shot.enabled=false",
                      "name=x=y", "data.path="]) == {
        "model.lora.r": 8, "model.lora.target_modules": ["q_proj", "v_proj"], "zero_shot.enabled": False,
        "name": "x=y", "data.path": ""}
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_set(["training.learning_rate"])
    for cmd in ("train", "experiment"):
        result = runner.invoke(app, [cmd, "--config", "configs/tiny-cpu.yaml", "--set", "training.bogus=1"])
        assert result.exit_code == 2 and "unknown config key training.bogus" in result.output
    result = runner.invoke(app, ["run", "--data", "unused.csv", "--set", "model.bogus=1"])
    assert result.exit_code == 2 and "unknown config key model.bogus" in result.output


# ------------------------------------------------------------------------------------ CLI against the configs
def _default(cfg: object, dotted: str) -> object:
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _field_type(cls: type, dotted: str) -> object:
    *parents, last = dotted.split(".")
    for part in parents:
        cls = typing.get_type_hints(cls)[part]
    return typing.get_type_hints(cls, include_extras=True)[last]


def _same(help_value: str, value: object) -> bool:
    if isinstance(value, bool):
        return help_value == ("on" if value else "off")
    if isinstance(value, (int, float)):
        return float(help_value) == float(value)
    return help_value == str(value)


@pytest.mark.parametrize("command, cls, module, mapping", [
    ("run", RunConfig, "prefpred.cli.run_cmds", "RUN_OPTION_KEYS"),
    ("train", TrainConfig, "prefpred.cli.llm_cmds", "TRAIN_OPTION_KEYS"),
    ("experiment", ExperimentConfig, "prefpred.cli.llm_cmds", "EXPERIMENT_OPTION_KEYS"),
])
def test_cli_defaults_and_choices_match_the_config(command, cls, module, mapping):
    import importlib

    keys = getattr(importlib.import_module(module), mapping)
    defaults = cls()
    checked = 0
    for param in COMMANDS[command].params:
        if param.name in ("config", "force", "overrides"):
            continue
        assert param.name in keys, f"--{param.name} sets no config key"
        assert param.default in (None, ()), f"--{param.name} must default to None (the config decides)"
        key, help_text = keys[param.name], param.help or ""
        said = re.search(r"\(default: ([^)<]+)\)", help_text)
        if said and said.group(1) not in ("config or hub",):
            assert _same(said.group(1), _default(defaults, key)), (command, param.name, said.group(1))
            checked += 1
        tp = _field_type(cls, key)
        while typing.get_origin(tp) is typing.Annotated:
            tp = typing.get_args(tp)[0]
        if typing.get_origin(tp) is typing.Literal:  # the help lists exactly the choices
            listed = re.findall(r"[\w.-]+", help_text.split(".")[0].replace(" or ", ", "))
            assert set(listed) == set(typing.get_args(tp)), (command, param.name, listed)
            checked += 1
    assert checked >= 2


def test_judge_and_split_defaults_match_their_sources():
    from prefpred.models.judge import ZeroShotJudge

    judge = {p.name: p.default for p in COMMANDS["judge"].params}
    sig = {k: v.default for k, v in inspect.signature(ZeroShotJudge).parameters.items()}
    same_name = ("style", "max_length", "parse_generation", "max_new_tokens", "device", "dtype", "load_in_4bit")
    for name in same_name:
        assert judge[name] == sig[name], name
    assert judge["batch_tokens"] == sig["token_budget"] and judge["batch_size"] == sig["max_batch_size"]
    assert judge["no_swap"] is (not sig["swap_average"])
    split = {p.name: p.default for p in COMMANDS["split"].params}
    assert (split["folds"], split["holdout"], split["group_by"]) == (SplitConfig().n_folds,
                                                                     SplitConfig().holdout_fraction,
                                                                     SplitConfig().group_by)
    assert split["seed"] == RunConfig().seed
