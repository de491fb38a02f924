"""``prefpred leaderboard`` through the CLI: run directories, style control, predicted battles, input checks."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from prefpred.cli import app
from prefpred.data import write_arena_csv
from prefpred.leaderboard.job import CSV_COLUMNS
from prefpred.testing import planted_pairs

runner = CliRunner()
STRENGTHS = {"alpha": 300.0, "bravo": 200.0, "charlie": 100.0, "delta": 0.0}


def _ok(result) -> None:
    assert result.exit_code == 0, result.output + str(result.exception)


def _one_line_error(result, *needles: str) -> str:
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert "Traceback" not in result.output
    return lines[0]


def _votes(path, n: int = 1500, seed: int = 0, *, style: bool = True):
    """A votes CSV of planted strengths (the longer answer also gets a bonus) with style columns."""
    rng = np.random.default_rng(seed)
    names = list(STRENGTHS)
    rows = []
    for i in range(n):
        a, b = rng.choice(len(names), 2, replace=False)
        len_a, len_b = rng.integers(100, 2000, 2)
        logit = (STRENGTHS[names[a]] - STRENGTHS[names[b]]) / 173.7 + 0.8 * (len_a - len_b) / (len_a + len_b)
        u = rng.random()
        winner = "tie" if u < 0.15 else "both_bad" if u < 0.2 else \
            ("model_a" if rng.random() < 1 / (1 + np.exp(-logit)) else "model_b")
        row = {"id": f"v{i}", "model_a": names[a], "model_b": names[b], "winner": winner}
        if style:
            row.update({"length_a": len_a, "length_b": len_b, "lists_a": rng.integers(0, 4),
                        "lists_b": rng.integers(0, 4)})
        rows.append(row)
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def _lb(tmp_path, *args: str):
    return runner.invoke(app, ["leaderboard", "--out", str(tmp_path / "runs"), *args])


def test_votes_leaderboard_run_directory(tmp_path):
    votes = _votes(tmp_path / "votes.csv")
    _ok(_lb(tmp_path, "--battles", str(votes), "--name", "h", "--rounds", "20", "--seed", "3",
            "--min-battles", "10"))
    run = tmp_path / "runs" / "h"
    for name in ("leaderboard.csv", "pairwise.csv", "ratings.png", "win_matrix.png", "config.yaml", "metrics.json", "report.md",
                 ".prefpred-complete"):
        assert (run / name).is_file(), name
    table = pd.read_csv(run / "leaderboard.csv", keep_default_na=False)
    assert list(table.columns[:len(CSV_COLUMNS)]) == list(CSV_COLUMNS)
    assert list(table["model"]) == list(STRENGTHS)  # planted order recovered, best first
    assert (table["ci_low"] <= table["rating"]).all() and (table["rating"] <= table["ci_high"]).all()
    assert table["rating"].is_monotonic_decreasing and table["rank"].iloc[0] == 1
    assert table["battles"].sum() == 2 * 1500
    assert "style_rating" in table.columns and "rank_change" in table.columns  # style columns -> style control
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["kind"] == "leaderboard" and metrics["mode"] == "human" and metrics["rounds"] == 20
    length = next(f for f in metrics["style"]["features"] if f["feature"] == "length")
    assert length["coef"] > 0.1 and length["ci_low"] > 0  # the planted length bonus
    assert metrics["style"]["features"][1]["feature"] == "lists"
    pairwise = pd.read_csv(run / "pairwise.csv").set_index(["model", "opponent"])
    assert len(pairwise) == 4 * 3 and pairwise["battles"].sum() == 2 * 1500
    ab, ba = pairwise.loc[("alpha", "delta")], pairwise.loc[("delta", "alpha")]
    assert ab["win_rate"] + ba["win_rate"] == pytest.approx(1) and ab["predicted"] > 0.5 > ba["predicted"]
    assert metrics["pairwise_fit"]["weighted_mean_abs_gap"] < 0.05  # planted data follow BT
    report = (run / "report.md").read_text()
    assert "## Ranking" in report and "## Style control" in report and "![ratings.png](ratings.png)" in report

    # the same seed gives the same file; an existing run is refused without --force
    _ok(_lb(tmp_path, "--battles", str(votes), "--name", "h2", "--rounds", "20", "--seed", "3",
            "--min-battles", "10"))
    again = pd.read_csv(tmp_path / "runs" / "h2" / "leaderboard.csv", keep_default_na=False)
    pd.testing.assert_frame_equal(table, again)
    _one_line_error(_lb(tmp_path, "--battles", str(votes), "--name", "h"), "exists", "--force")

    # both_bad dropped, an anchor model pinned, style off
    _ok(_lb(tmp_path, "--battles", str(votes), "--name", "d", "--rounds", "0", "--both-bad", "drop",
            "--anchor", "delta", "--anchor-rating", "1500", "--style", "off"))
    dropped = json.loads((tmp_path / "runs" / "d" / "metrics.json").read_text())
    assert dropped["dropped"]["both_bad"] > 0 and dropped["n_battles"] == 1500 - dropped["dropped"]["both_bad"]
    assert dropped["ratings"]["delta"] == pytest.approx(1500) and dropped["style"] is None


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """Pairs with text whose model-3 writes the best answers, and a CPU run trained on other such pairs."""
    d = tmp_path_factory.mktemp("lbpred")
    train = write_arena_csv(planted_pairs(160, seed=31), d / "train.csv")
    battles = write_arena_csv(planted_pairs(240, seed=32), d / "battles.csv")
    result = runner.invoke(app, ["run", "--data", str(train), "--out", str(d / "runs"), "--name", "cpu",
                                 "--folds", "2", "--holdout", "0", "--no-embeddings", "--no-calibrate"])
    _ok(result)
    return d, battles, d / "runs" / "cpu"


def test_text_pairs_predicted_leaderboard_and_compare(planted, tmp_path):
    _, battles, cpu_run = planted
    # planted pairs of equal quality are self-battles ("model-2" against itself): refused, then skipped
    _one_line_error(_lb(tmp_path, "--battles", str(battles), "--name", "human"), "self-battle", "--skip-invalid")
    _ok(_lb(tmp_path, "--battles", str(battles), "--name", "human", "--rounds", "10", "--min-battles", "5",
            "--skip-invalid"))
    assert json.loads((tmp_path / "runs" / "human" / "metrics.json").read_text())["dropped"]["self-battle"] > 0
    human = pd.read_csv(tmp_path / "runs" / "human" / "leaderboard.csv", keep_default_na=False)
    assert human["model"].iloc[0] == "model-3" and human["model"].iloc[-1] == "model-0"
    assert "style_rank" in human.columns  # text -> style counts -> style control

    result = _lb(tmp_path, "--run", str(cpu_run), "--data", str(battles), "--name", "pred", "--rounds", "10",
                 "--min-battles", "5", "--skip-invalid", "--compare", str(tmp_path / "runs" / "human"))
    _ok(result)
    assert "Spearman" in result.output
    run = tmp_path / "runs" / "pred"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["mode"] == "predicted" and metrics["run"] == str(cpu_run)
    outcomes = metrics["outcomes"]
    assert not all(float(v).is_integer() for v in outcomes.values())  # soft outcomes
    comp = metrics["compare"]
    assert comp["n_common"] == 4 and comp["spearman"] > 0.7 and len(comp["models"]) == 4
    predicted = pd.read_csv(run / "leaderboard.csv", keep_default_na=False)
    assert predicted["model"].iloc[0] == "model-3"
    assert "## Comparison" in (run / "report.md").read_text()
    # the run was trained on other pairs (reusing the same ids): nothing in-sample, nothing said
    assert metrics["in_sample_pairs"] == 0 and "In-sample" not in (run / "report.md").read_text()

    # judging the run's own training pairs is in-sample: counted, warned about, and in the report
    own = _lb(tmp_path, "--run", str(cpu_run), "--data", str(cpu_run.parent.parent / "train.csv"), "--name", "own",
              "--rounds", "2", "--min-battles", "5", "--skip-invalid")
    _ok(own)
    own_metrics = json.loads((tmp_path / "runs" / "own" / "metrics.json").read_text())
    assert own_metrics["in_sample_pairs"] == 160 and "in-sample" in own.output
    assert "**In-sample:** 160 of the judged pairs" in (tmp_path / "runs" / "own" / "report.md").read_text()

    # --compare against a run that is not a leaderboard
    _one_line_error(_lb(tmp_path, "--battles", str(battles), "--name", "x", "--skip-invalid", "--compare",
                        str(cpu_run)),
                    "not a leaderboard run")


@pytest.mark.parametrize(("case", "needles"), [
    ("unknown winner", ["row 2", "column 'winner'", "unknown winner 'B'"]),
    ("self-battle", ["row 1", "column 'model_b'", "self-battle", "--skip-invalid"]),
    ("no model columns", ["column 'model_a'", "missing column(s) model_a, model_b"]),
    ("text without model columns", ["column 'model_a'", "no model_a/model_b columns"]),
    ("rare model", ["model 'zed' has only 1 battle(s)", "--rare"]),
    ("disconnected", ["never meet"]),
    ("style on without text", ["--style on needs"]),
    ("run without data", ["--run needs --data"]),
    ("both sources", ["exactly one of --battles"]),
    ("bad choice", ["both_bad must be one of"]),
])
def test_input_checks_one_line_exit_2(tmp_path, case, needles):
    p = tmp_path / "b.csv"
    head = "id,model_a,model_b,winner\n"
    args: list[str] = ["--battles", str(p)]
    if case == "unknown winner":
        p.write_text(head + "1,x,y,model_a\n2,x,y,B\n")
    elif case == "self-battle":
        p.write_text(head + "1,x,x,tie\n2,x,y,model_a\n")
    elif case == "no model columns":
        p.write_text("id,winner\n1,model_a\n")
    elif case == "text without model columns":
        pairs = [pp.__class__(id=pp.id, turns=pp.turns, label=pp.label) for pp in planted_pairs(5, seed=1)]
        write_arena_csv(pairs, p)
    elif case == "rare model":
        p.write_text(head + "".join(f"{i},x,y,model_a\n" for i in range(6)) + "9,zed,x,tie\n")
        args += ["--min-battles", "3", "--rare", "error"]
    elif case == "disconnected":
        p.write_text(head + "1,x,y,model_a\n2,u,v,model_b\n")
        args += ["--min-battles", "0"]
    elif case == "style on without text":
        p.write_text(head + "1,x,y,model_a\n2,y,x,model_a\n")
        args += ["--style", "on", "--min-battles", "0"]
    elif case == "run without data":
        args = ["--run", str(tmp_path)]
    elif case == "both sources":
        args += ["--run", str(tmp_path), "--data", str(p)]
    elif case == "bad choice":
        args += ["--both-bad", "maybe"]
    line = _one_line_error(_lb(tmp_path, *args, "--rounds", "2"), *needles)
    if case not in {"run without data", "both sources", "bad choice", "style on without text"}:
        assert str(p) in line
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())  # nothing half-written


def test_help_and_yaml_config(tmp_path):
    result = runner.invoke(app, ["leaderboard", "--help"])
    _ok(result)
    assert "--battles" in result.output and "--compare" in result.output
    votes = _votes(tmp_path / "votes.csv", n=300, style=False)
    yml = tmp_path / "lb.yaml"
    yml.write_text("rounds: 4\nmin_battles: 10\nanchor: bravo\n")
    _ok(_lb(tmp_path, "--battles", str(votes), "--name", "y", "--config", str(yml), "--anchor-rating", "1200"))
    metrics = json.loads((tmp_path / "runs" / "y" / "metrics.json").read_text())
    assert metrics["rounds"] == 4 and metrics["ratings"]["bravo"] == pytest.approx(1200)  # flag beats YAML
    assert metrics["style"] is None  # no text, no style columns
    yml.write_text("rounds: 4\nbogus: 1\n")
    _one_line_error(_lb(tmp_path, "--battles", str(votes), "--config", str(yml)), "bogus")


def test_terminal_table_keeps_numbers_whole_at_80_columns(tmp_path):
    """Long model names are cut, never the ratings, intervals or counts (a pipe or small terminal: 80 columns)."""
    votes = _votes(tmp_path / "votes.csv", n=600)  # style columns: one more column to fit
    table = pd.read_csv(votes)
    long = {n: f"vendor-model-with-a-very-long-release-name-preview-{n}" for n in STRENGTHS}  # same start
    table["model_a"], table["model_b"] = table["model_a"].map(long), table["model_b"].map(long)
    table.to_csv(votes, index=False)
    result = _lb(tmp_path, "--battles", str(votes), "--name", "w", "--rounds", "5", "--min-battles", "10")
    _ok(result)
    board = pd.read_csv(tmp_path / "runs" / "w" / "leaderboard.csv", keep_default_na=False)
    for _, r in board.iterrows():
        assert f"{r['rating']:.1f}" in result.stdout
        assert f"{r['ci_low']:.1f} – {r['ci_high']:.1f}" in result.stdout
        assert r["model"] not in result.stdout  # cut to fit...
    rows = [line.split("│") for line in result.stdout.splitlines() if line.count("│") >= 5]
    shown = [cells[1].strip() for cells in rows if cells[1].strip() != "model"]
    assert len(shown) == len(board) == len(set(shown))  # models sharing a long prefix stay apart
    for cell, name in zip(shown, board["model"], strict=True):  # ...in the middle: start and end kept
        head, tail = cell.split("…")
        assert len(head) >= 4 and len(tail) >= 4 and name.startswith(head) and name.endswith(tail)
    assert max(len(line) for line in result.stdout.splitlines()) <= 80
    assert "win rate" in result.stdout
