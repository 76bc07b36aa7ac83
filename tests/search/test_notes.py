"""The worker's review evidence: trial notes, study figures and run-file artifacts, read back
through optuna-dashboard's and Optuna's own APIs."""

from __future__ import annotations

import copy
import dataclasses
import io
import json
from pathlib import Path

import optuna
import pytest
from optuna.artifacts import FileSystemArtifactStore, download_artifact, get_all_artifact_meta
from optuna_dashboard import get_note
from optuna_dashboard._custom_plot_data import get_plotly_graph_objects
from search_testing import FAKE_SPACE, STUCK_REASON, fake_options

from search.review.notes import STUDY_FIGURES
from search.space.search_space import space_from_dict
from search.storage.sql import open_storage
from search.study.join import open_study
from search.worker.loop import run_worker


@pytest.fixture
def study(evidence_study: tuple[str, str, Path]) -> optuna.Study:
    url, name, _ = evidence_study
    return optuna.load_study(study_name=name, storage=open_storage(url, heartbeat=False))


def note(study: optuna.Study, number: int) -> str:
    return get_note(optuna.Trial(study, study.trials[number]._trial_id))


def test_a_pruned_trial_note_has_the_reason_and_per_class_table_with_class_names(
    study: optuna.Study,
) -> None:
    text = note(study, 0)
    assert text.startswith("## Trial 0: PRUNED (collapses)\n")
    assert "- epochs run: 3" in text and f"- reason: {STUCK_REASON}" in text
    assert "- best balanced_accuracy: 0.2500 at epoch 0" in text
    assert "| class | accuracy | F1 | volumes |" in text
    assert "| normal | 1 | - | 16 |" in text and "| drusen | 0 | 0 | 6 |" in text
    assert "| true \\ predicted | normal | drusen | cnv | fluid |" in text
    assert "| drusen | 5 | 1 | 0 | 0 |" in text  # confusion row: true drusen
    # the epoch the rule fired on first, labelled; the best epoch beside it; the curve, marked
    assert text.index("### Prune epoch 2 (the rule fired on epochs 0-2)") < text.index("### Best epoch 0")
    assert "| epoch | balanced accuracy | majority share | epoch was |" in text
    assert "| 0 | 0.250 | 97% | prune, best |" in text and "| 2 | 0.250 | 97% | prune |" in text


def test_complete_and_failed_trial_notes(study: optuna.Study) -> None:
    complete = note(study, 2)
    assert complete.startswith("## Trial 2: COMPLETE (learns)")
    assert "- epochs run: 6" in complete and "at epoch 4" in complete
    assert "| cnv | 0.9 | 0.9 | 6 |" in complete and "- reason" not in complete
    failed = note(study, 1)
    assert "## Trial 1: FAIL (raises)" in failed and "- reason: RuntimeError: boom" in failed
    assert "- time: " in failed and "epoch 0" not in failed.split("### Validation by epoch")[0]
    assert "| 0 | 0.500 | 38% |  |" in failed  # it validated epoch 0, then raised


def test_study_figures_are_stored_for_optuna_dashboard(study: optuna.Study) -> None:
    stored = get_plotly_graph_objects(study._storage.get_study_system_attrs(study._study_id))
    assert sorted(stored) == sorted(STUDY_FIGURES)
    prunes = json.loads(stored["prune-reasons-by-epoch"])
    assert [(t["name"], t["x"], t["y"]) for t in prunes["data"]] == [("stuck", [2], [1])]
    share = json.loads(stored["majority-class-share"])
    assert {t["name"] for t in share["data"]} == {"PRUNED", "FAIL", "COMPLETE"}  # FAIL: its epoch 0
    curves = json.loads(stored["per-class-accuracy-top-trials"])
    assert [t["name"] for t in curves["data"]][:4] == [
        "trial 2: normal", "trial 2: drusen", "trial 2: cnv", "trial 2: fluid"]


def test_run_files_are_artifacts_of_each_trial(
    study: optuna.Study, evidence_study: tuple[str, str, Path], tmp_path: Path,
) -> None:
    _, _, runs = evidence_study
    store = FileSystemArtifactStore(runs / "artifacts")
    for trial in study.trials:
        metas = get_all_artifact_meta(trial, storage=study._storage)
        assert sorted(m.filename for m in metas) == ["config.yaml", "metrics.jsonl"]
        run_dir = Path(trial.user_attrs["run_dir"])
        for meta in metas:
            copy_ = tmp_path / f"{trial.number}-{meta.filename}"
            download_artifact(artifact_store=store, file_path=str(copy_), artifact_id=meta.artifact_id)
            assert copy_.read_bytes() == (run_dir / meta.filename).read_bytes()
    metrics = (tmp_path / "2-metrics.jsonl").read_text().splitlines()
    assert len(metrics) == 6 and json.loads(metrics[4])["val/balanced_accuracy"] == 0.9


def test_evidence_that_cannot_be_written_never_fails_a_trial(tmp_path: Path) -> None:
    space = space_from_dict(copy.deepcopy(FAKE_SPACE))
    storage = open_storage(f"sqlite:///{tmp_path / 'study.db'}")
    study, _ = open_study(space, storage, "blocked")
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    options = fake_options(tmp_path, 1, artifacts_dir=blocker)
    options = dataclasses.replace(options, env={**options.env, "FAKE_FIT_RUN_FILES": "1"})
    out = io.StringIO()
    run_worker(study, space, storage, options, out=out)
    assert [t.state.name for t in study.trials] in (["COMPLETE"], ["PRUNED"])
    assert "octsearch: warning: trial 0: cannot write its artifacts: FileExistsError" in out.getvalue()
    assert get_all_artifact_meta(study.trials[0], storage=storage) == []
    assert get_note(optuna.Trial(study, study.trials[0]._trial_id)).startswith("## Trial 0")
