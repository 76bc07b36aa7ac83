"""A trial's validation curve as a small inline SVG for the report: balanced accuracy and the
majority-class share per epoch, the collapse rule's thresholds (share 90%, balanced accuracy at
chance + 0.05), the unfreeze epoch, and the epochs the prune rule fired on. No plotly: the
report draws one per pruned trial, and plotly's per-figure markup would cost far more than the
few hundred bytes of an SVG.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence

from optuna.trial import FrozenTrial

from search.contract import stored_epochs, unfreeze_at_epoch
from search.pruning import Thresholds

WIDTH, HEIGHT, PAD = 360, 130, 24
ACCURACY, SHARE, THRESHOLD, MARK = "#1f77b4", "#d62728", "#7f7f7f", "#ff7f0e"


def _xy(epoch: int, value: float, last: int) -> tuple[float, float]:
    x = PAD + (WIDTH - 2 * PAD) * (epoch / last if last else 0.5)
    y = HEIGHT - PAD - (HEIGHT - 2 * PAD) * min(max(value, 0.0), 1.0)
    return round(x, 1), round(y, 1)


def _line(points: Sequence[tuple[int, float]], last: int, color: str, dash: str = "") -> str:
    coords = " ".join(f"{x},{y}" for x, y in (_xy(e, v, last) for e, v in points))
    extra = f' stroke-dasharray="{dash}"' if dash else ""
    return f'<polyline fill="none" stroke="{color}" stroke-width="2"{extra} points="{coords}"/>'


def _series(records: Sequence[tuple[int, dict[str, object]]], key: str) -> list[tuple[int, float]]:
    """``(epoch, value)`` of every record with a finite ``key`` (NaN is stored as None)."""
    return [(e, float(v)) for e, m in records
            if isinstance(v := m.get(key), (int, float)) and math.isfinite(v)]


def curve_svg(trial: FrozenTrial, fired: Sequence[int], thresholds: Thresholds | None = None) -> str:
    """The SVG of ``trial``'s curve (``fired``: the epochs its rule fired on); ``""`` without
    stored epochs."""
    t = thresholds or Thresholds()
    records = stored_epochs(trial)
    if not records:
        return ""
    last = max(e for e, _ in records)
    acc, share = _series(records, "val/balanced_accuracy"), _series(records, "val/max_class_share")
    classes = max((len(m.get("val/per_class_accuracy") or []) for _, m in records), default=0)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
             f'role="img" aria-label="validation curve of trial {trial.number}">']
    levels = [(t.max_class_share, f"share {t.max_class_share:.0%}")]
    if classes:
        levels.append((1 / classes + t.margin, f"chance + {t.margin:g}"))
    for level, label in levels:
        _, y = _xy(0, level, last)
        parts.append(f'<line x1="{PAD}" x2="{WIDTH - PAD}" y1="{y}" y2="{y}" stroke="{THRESHOLD}" '
                     f'stroke-dasharray="2,3"/><text x="{WIDTH - PAD}" y="{y - 2}" font-size="9" '
                     f'text-anchor="end" fill="{THRESHOLD}">{html.escape(label)}</text>')
    unfreeze = unfreeze_at_epoch(trial)
    if 0 <= unfreeze <= last:
        x, _ = _xy(unfreeze, 0, last)
        parts.append(f'<line x1="{x}" x2="{x}" y1="{PAD}" y2="{HEIGHT - PAD}" stroke="{THRESHOLD}"/>'
                     f'<text x="{x + 2}" y="{PAD - 4}" font-size="9" fill="{THRESHOLD}">unfreeze</text>')
    for epoch in fired:
        if 0 <= epoch <= last:
            x, _ = _xy(epoch, 0, last)
            parts.append(f'<circle cx="{x}" cy="{HEIGHT - PAD + 6}" r="3" fill="{MARK}"/>')
    parts += [_line(acc, last, ACCURACY), _line(share, last, SHARE, "5,3")]
    parts.append(f'<text x="{PAD}" y="{HEIGHT - 4}" font-size="9">epoch 0</text>'
                 f'<text x="{WIDTH - PAD}" y="{HEIGHT - 4}" font-size="9" text-anchor="end">epoch {last}'
                 f'</text><text x="{PAD}" y="{PAD - 4}" font-size="9"><tspan fill="{ACCURACY}">'
                 f'balanced accuracy</tspan> · <tspan fill="{SHARE}">majority share</tspan> · '
                 f'<tspan fill="{MARK}">● pruned on</tspan></text></svg>')
    return "".join(parts) if acc or share else ""
