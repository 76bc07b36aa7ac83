"""Each trial's run files as Optuna artifacts, in a file-system artifact store.

The store's directory defaults to ``<runs-dir>/artifacts`` (``--artifacts-dir`` changes it);
``octsearch dashboard`` serves the same store, so a trial's ``metrics.jsonl`` and
``config.yaml`` open from its page. The artifact's metadata lives with the trial in the study,
its bytes in the store: a worker on another host needs the directory on a shared file system
for the dashboard to open them (the metadata is listed either way).
"""

from __future__ import annotations

from pathlib import Path

import optuna
from optuna.artifacts import FileSystemArtifactStore, upload_artifact

ARTIFACTS_DIR = "artifacts"  # under --runs-dir
RUN_FILES = ("metrics.jsonl", "config.yaml")
MIMETYPES = {".jsonl": "application/x-ndjson", ".yaml": "text/yaml"}


def default_artifacts_dir(runs_dir: Path) -> Path:
    return runs_dir / ARTIFACTS_DIR


def artifact_store(directory: Path, *, create: bool = True) -> FileSystemArtifactStore:
    """The store in ``directory`` (made when ``create``)."""
    if create:
        directory.mkdir(parents=True, exist_ok=True)
    return FileSystemArtifactStore(directory)


def upload_run_files(store: FileSystemArtifactStore, trial: optuna.Trial, run_dir: Path) -> list[str]:
    """Upload the run files of ``trial`` that exist; their artifact ids. Before the trial is
    told: a finished trial's attributes cannot change."""
    ids = []
    for name in RUN_FILES:
        path = run_dir / name
        if path.is_file():
            ids.append(upload_artifact(artifact_store=store, file_path=str(path), study_or_trial=trial,
                                       mimetype=MIMETYPES.get(path.suffix)))
    return ids
