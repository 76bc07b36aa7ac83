"""One worker: the study loop (``loop``), several trials at once (``slots``), what every trial needs
checked first (``preflight``), results not yet told (``pending``), preempted trials re-queued
(``requeue``), the checkpoints a study keeps (``retention``) and what a worker says about the
study's progress (``progress``).
"""

from __future__ import annotations

from search.worker.loop import TrialEndCallback, WorkerOptions, run_worker
from search.worker.preflight import check_host, check_storage, preflight
from search.worker.progress import waiting_explained
from search.worker.retention import DEFAULT_KEEP_BEST, CheckpointRetention, kept_bytes

__all__ = [
    "DEFAULT_KEEP_BEST",
    "CheckpointRetention",
    "TrialEndCallback",
    "WorkerOptions",
    "check_host",
    "check_storage",
    "kept_bytes",
    "preflight",
    "run_worker",
    "waiting_explained",
]
