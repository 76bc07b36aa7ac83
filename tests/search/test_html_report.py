"""``octsearch report``: one self-contained HTML file per study, finished or still running."""

from __future__ import annotations

import copy
import re
from html.parser import HTMLParser
from pathlib import Path

import optuna
import plotly.graph_objects as go
import pytest
from fake_fit import epoch_metrics
from optuna.trial import TrialState, create_trial
from search_testing import FAKE_SPACE, STUCK_REASON

from search.cli import main
from search.contract import epoch_attr, write_epoch
from search.review import figures
from search.review.curve_svg import curve_svg
from search.review.html_report import SECTIONS, build_report
from search.space.search_space import space_from_dict
from search.storage.sql import open_storage
from search.study.join import open_study


class _Parsed(HTMLParser):
    """Sections with their text, plot containers, and every script's src."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: dict[str, str] = {}
        self.plots: list[str] = []
        self.script_srcs: list[str] = []
        self.inline_scripts = 0
        self._section: str | None = None
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "section":
            self._section = a.get("id") or ""
            self.sections[self._section] = ""
        elif tag == "div" and (a.get("id") or "").startswith("plot-"):
            self.plots.append(a["id"] or "")
        elif tag == "script":
            self._in_script = True
            if a.get("src"):
                self.script_srcs.append(a["src"] or "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "section":
            self._section = None
        elif tag == "script":
            self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and len(data) > 1_000_000:
            self.inline_scripts += 1  # plotly.js itself
        if self._section is not None and not self._in_script:
            self.sections[self._section] += data


def parse(text: str) -> _Parsed:
    parsed = _Parsed()
    parsed.feed(text)
    return parsed


def test_report_of_a_finished_study_has_every_section_and_needs_no_network(
    reviewed_study: tuple[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    url, name = reviewed_study
    out = tmp_path / "report.html"
    assert main(["report", "--storage", url, "--study", name, "--out", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().err
    parsed = parse(out.read_text(encoding="utf-8"))
    assert list(parsed.sections) == list(SECTIONS)
    assert parsed.script_srcs == []  # nothing loaded from anywhere
    assert parsed.inline_scripts == 1  # plotly.js, once
    # Only the importances need two completed trials; every other figure is drawn.
    assert parsed.plots == ["plot-history", "plot-intermediate", "plot-parallel", "plot-collapse",
                            "plot-per-class", "plot-prunes"]
    board = parsed.sections["leaderboard"]
    assert board.index("2 (learns)") < board.index("0 (collapses)") < board.index("1 (raises)")
    assert STUCK_REASON in board and "RuntimeError: boom" in board
    assert "acc 0" in board and "F1 3" in board
    # the reason near the front; the best's interval marked (the fake records a perfect matrix)
    assert board.index("reason") < board.index("balanced_accuracy") < board.index("95% interval")
    assert "[1.000, 1.000] best" in board
    text = out.read_text(encoding="utf-8")
    assert '<nav id="contents">Contents: <a href="#leaderboard">Leaderboard</a> · ' in text
    assert all(f'href="#{section}"' in text for section in SECTIONS)
    assert "needs at least 2 completed trials (the study has 1 completed)" in parsed.sections[
        "importance"]
    # trial 0 was pruned after 3 of its 6 epochs; trial 2 ran its 6.
    assert ("1 of 2 finished trials were pruned; 9 epochs were run where running every trial to "
            "its end would have taken 12: 3 epochs saved.") in parsed.sections["prunes"]
    assert "stuck" in parsed.sections["prunes"]
    # each pruned trial's evidence: the epoch its rule fired on, under the class names, and its curve
    evidence = parsed.sections["evidence"]
    assert f"trial 0 (collapses): {STUCK_REASON}" in evidence
    assert "prune epoch 2" in evidence and "best epoch 0" in evidence
    assert "prune, best" in evidence
    svg = re.search(r'<svg [^>]*aria-label="validation curve of trial 0">.*?</svg>', text)
    assert svg is not None and svg.group(0).count("<polyline") == 2 and "share 90%" in svg.group(0)
    assert svg.group(0).count("<circle") == 3  # the rule fired on epochs 0-2


def test_report_of_a_running_study(sqlite_url: str) -> None:
    space = space_from_dict(copy.deepcopy(FAKE_SPACE))
    study, _ = open_study(space, open_storage(sqlite_url, heartbeat=False), "running")
    def ask(hidden: int, lr: float) -> optuna.Trial:
        study.enqueue_trial({"model.head.hidden": hidden, "train.lr_head": lr})
        trial = study.ask()
        space.suggest(trial)
        return trial

    done = ask(64, 1e-3)
    for epoch in range(3):
        write_epoch(done, epoch, epoch_metrics(epoch, collapsed=False))
        done.report(0.5 + 0.1 * epoch, epoch)
    study.tell(done, 0.7)
    other = ask(0, 3e-3)
    study.tell(other, 0.6)
    running = ask(0, 1e-3)
    for epoch in range(2):
        write_epoch(running, epoch, epoch_metrics(epoch, collapsed=True))
        running.report(0.25, epoch)
    parsed = parse(build_report(study))
    assert list(parsed.sections) == list(SECTIONS)
    assert "plot-importance" in parsed.plots  # two completed trials: importances drawn
    assert "RUNNING" in parsed.sections["leaderboard"]
    assert "0 of 2 finished trials were pruned" in parsed.sections["prunes"]
    assert optuna.load_study(study_name="running", storage=sqlite_url).trials[2].state.name == "RUNNING"


def test_epochs_and_counts_get_whole_number_ticks(evidence: optuna.Study) -> None:
    """Plotly's automatic ticks put 0.5 steps on a short axis: epoch 1.5, 0.5 trials."""
    share, prunes = figures.majority_share(evidence), figures.prune_reasons(evidence)
    assert (share.layout.xaxis.dtick, share.layout.xaxis.tickformat) == (1, "d")  # epochs 0-5
    assert (prunes.layout.yaxis.dtick, prunes.layout.yaxis.tickformat) == (1, "d")  # 1 trial
    long = figures.integer_ticks(go.Figure(go.Scatter(x=list(range(47)), y=[0.5] * 47)))
    assert long.layout.xaxis.dtick == 5  # about ten ticks


def test_a_curve_skips_missing_values_and_a_trial_without_epochs_has_none() -> None:
    records = {epoch_attr(0): {"val/balanced_accuracy": None, "val/max_class_share": 1.0},
               epoch_attr(1): {"val/balanced_accuracy": 0.3, "val/max_class_share": 0.9}}
    trial = create_trial(state=TrialState.PRUNED, intermediate_values={1: 0.3}, system_attrs=records)
    svg = curve_svg(trial, [1])
    assert "nan" not in svg and svg.count("<polyline") == 2 and svg.count("<circle") == 1
    assert curve_svg(create_trial(state=TrialState.COMPLETE, value=1.0), []) == ""
