"""One trial in a child process: request and result files, the watching parent and the child
(``process``, run as ``python -m search.trial``), what of its output the worker echoes
(``echo``), the trainer's epochs as reports and prunes (``reporter``), epochs not yet stored
(``epoch_queue``), death with the worker (``lifeline``) and the devices a trial process gets
(``placement``) and its W&B identity (``identity``).
"""

from __future__ import annotations

from search.trial.epoch_queue import QUEUE_FILE, deliver_queued, read_queue
from search.trial.identity import with_wandb_identity
from search.trial.placement import Assignment, auto_parallel, host_devices, parse_parallel, plan_slots
from search.trial.process import (
    HOST_PROBLEM,
    RESULT_FILE,
    STOP_GRACE_S,
    Outcome,
    StopRequest,
    TrialRequest,
    TrialResult,
    run_trial_process,
)
from search.trial.reporter import EpochReporter, metric_value

__all__ = [
    "HOST_PROBLEM",
    "Assignment",
    "EpochReporter",
    "Outcome",
    "QUEUE_FILE",
    "RESULT_FILE",
    "STOP_GRACE_S",
    "StopRequest",
    "TrialRequest",
    "TrialResult",
    "auto_parallel",
    "deliver_queued",
    "host_devices",
    "metric_value",
    "parse_parallel",
    "plan_slots",
    "read_queue",
    "run_trial_process",
    "with_wandb_identity",
]
