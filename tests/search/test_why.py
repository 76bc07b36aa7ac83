"""``octsearch why``, its report section and dashboard note, and ``octsearch rerun``, on the knob
study (tests/search/conftest.py): ``train.class_weights: none`` collapses, ``auto`` learns, and a
slow learner is pruned by the reach rule while it still improves."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import optuna
import pytest
from optuna_dashboard import get_note
from search_testing import fake_options
from test_html_report import parse

from search.cli import main
from search.contract import PRUNE_KIND_ATTR
from search.review.html_report import build_report
from search.review.why import format_why
from search.storage.sql import open_storage
from search.study.join import stored_space
from search.worker.loop import run_worker


def load(url: str, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=open_storage(url, heartbeat=False))


def why(url: str, name: str, capsys: pytest.CaptureFixture[str]) -> list[str]:
    assert main(["why", "--storage", url, "--study", name]) == 0
    return capsys.readouterr().out.splitlines()


def flat(lines: list[str]) -> str:
    """The text with its wrapping undone (every run of whitespace one space)."""
    return " ".join(" ".join(lines).split())


def test_the_worker_stores_which_rule_pruned_each_trial(knob_study: tuple[str, str, Path]) -> None:
    study = load(*knob_study[:2])
    assert [t.user_attrs.get(PRUNE_KIND_ATTR) for t in study.trials] == [
        None, None, "collapse", "collapse", "inner"]


def test_why_ranks_the_knob_that_drives_collapse_first_with_counts(
    knob_study: tuple[str, str, Path], capsys: pytest.CaptureFixture[str],
) -> None:
    url, name, _ = knob_study
    lines = why(url, name, capsys)
    assert max(map(len, lines)) <= 120
    text = flat(lines)
    assert text.startswith("study 'knob': 4 finished trials: 2 (50%) collapsed, 1 (25%) pruned by the inner "
                           "rule or a diverged loss, 1 (25%) complete; 1 failed (in no share)")
    ranking = lines[lines.index(next(x for x in lines if x.lstrip().startswith("#  parameter"))) + 1:][:3]
    assert [r.split()[:2] for r in ranking] == [["1", "train.class_weights"], ["2", "model.head.hidden"],
                                                ["3", "train.lr_head"]]
    assert ranking[0].split()[2:] == ["1.000", "100%", "0.820", "0.019", "4"]
    table = lines[lines.index("1. train.class_weights") + 1:][:3]
    assert [r.split() for r in table] == [
        ["value", "trials", "collapsed", "pruned", "complete", "failed"],
        ["auto", "2", "0", "(0%)", "1", "(50%)", "1", "(50%)", "1"],
        ["none", "2", "2", "(100%)", "0", "(0%)", "0", "(0%)", "0"]]
    suspects = text[text.index("Late-bloomer suspects"):]
    assert ("trial 4, pruned at epoch 3 by the inner rule: validation balanced accuracy 0.40 -> 0.50 "
            "(epochs 1-3)") in suspects
    assert any(x.startswith("    reach: at most 0.64 by epoch 5") for x in lines)  # its reason, clipped
    assert "trial 2," not in suspects  # stuck collapses with flat curves are no suspects


def test_the_report_and_the_dashboard_note_show_the_same_ranking(knob_study: tuple[str, str, Path]) -> None:
    study = load(*knob_study[:2])
    parsed = parse(build_report(study))
    section = parsed.sections["why"]
    assert section.index("train.class_weights") < section.index("model.head.hidden") < section.index("train.lr_head")
    assert "2 (100%)" in section and "Late-bloomer suspects" in section
    assert "epoch 3the inner rulevalidation balanced accuracy 0.40 -> 0.50 (epochs 1-3)" in section
    assert "plot-parallel" in parsed.plots  # every finished trial, coloured by how it ended
    assert "on the 1 completed trials only" in parsed.sections["importance"]
    note = get_note(study)  # written by the worker as each trial ended
    assert note.startswith("## Why trials ended as they did\n")
    assert "| 1 | train.class_weights | 1.000 | 100% | 0.820 | 0.019 | 4 |" in note
    assert "| none | 2 | 2 (100%) | 0 (0%) | 0 (0%) | 0 |" in note
    assert "| 4 | epoch 3 | the inner rule | validation balanced accuracy 0.40 -> 0.50 (epochs 1-3)" in note


def test_rerun_runs_a_pruned_configuration_to_its_end_without_pruning(
    knob_study: tuple[str, str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    source, name, root = knob_study
    with sqlite3.connect(root / "study.db") as old, sqlite3.connect(tmp_path / "study.db") as new:
        old.backup(new)  # the shared study stays as it is
    url = f"sqlite:///{tmp_path / 'study.db'}"
    assert main(["rerun", "4", "--storage", url, "--study", name]) == 0
    assert capsys.readouterr().err == (
        "octsearch: trial 4's configuration is queued as trial 5 ('rerun of 4'), to run its whole budget "
        "without pruning; a worker starts it when the study has room: it has 4 finished and 0 running trials "
        "(octsearch run --trials 5 or more)\n")
    for argv, error in ((["rerun", "4"], "trial 4 of study 'knob' is already queued to run again, as trial 5"),
                        (["rerun", "5"], "trial 5 of study 'knob' is WAITING: rerun a trial that ended"),
                        (["rerun", "9"], "study 'knob' has no trial 9 (it has trials 0-5)")):
        assert main([*argv, "--storage", url, "--study", name]) == 2
        assert capsys.readouterr().err == f"octsearch: error: {error}\n"
    study = load(url, name)
    storage = open_storage(url)
    run_worker(study, stored_space(study), storage, fake_options(tmp_path, 5))
    rerun = study.trials[5]
    # The reach rule pruned the slow learner at epoch 3; unpruned, it runs its 6 epochs.
    assert (rerun.state.name, len(rerun.intermediate_values), rerun.value) == ("COMPLETE", 6, pytest.approx(0.6))
    assert rerun.params == study.trials[4].params
    assert rerun.user_attrs["enqueued"] == "rerun of 4" and rerun.user_attrs["rerun_of"] == 4
    assert "trial 4, pruned at epoch 3 by the inner rule: validation balanced accuracy 0.40 -> 0.50 (epochs " \
           "1-3); training balanced accuracy 0.40 -> 0.50 (epochs 1-3); rerun as trial 5" in \
           flat(why(url, name, capsys))


def test_why_before_any_trial_finished_says_so() -> None:
    study = optuna.create_study(study_name="new", direction="maximize")
    study.ask({"w": optuna.distributions.CategoricalDistribution(["auto", "none"])})  # still running
    lines = format_why(study).splitlines()
    assert flat(lines).startswith("study 'new': 0 finished trials: 0 (-) collapsed, 0 (-) pruned by the inner rule "
                                  "or a diverged loss, 0 (-) complete; 0 failed (in no share) No trial has finished "
                                  "yet. Late-bloomer suspects:")
    assert lines[-1] == "  none" and "#  parameter" not in flat(lines)
