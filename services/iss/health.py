"""The tracker's health report (for /healthz, the console and the metrics): JSON-able, never raises."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from services.common.iso_time import iso_z
from services.iss.anchor import Anchor
from services.iss.polling import Polling
from services.iss.sources import Fix
from services.iss.state import IssState
from services.iss.tle import Elements


def health_report(
    now: datetime,
    *,
    status: str,
    state: IssState | None,
    fix: Fix | None,
    elements: Elements | None,
    anchor: Anchor | None,
    disagreement: dict[str, Any] | None,
    polling: Polling,
) -> dict[str, Any]:
    """Per-source health, the model in use and its age, the fix and how the model lines up with it."""
    return {
        "status": status,
        "started": polling.warmup is not None,
        "cycles": polling.cycles,
        "source": state.source if state else None,
        "accuracy_km": state.accuracy_km if state else None,
        "fix": None if fix is None else {
            "source": fix.source,
            "measured_at": iso_z(fix.measured_at),
            "age_seconds": round((now - fix.measured_at).total_seconds(), 1),
        },
        "elements": None if elements is None else {
            "origin": elements.origin,
            "epoch": iso_z(elements.epoch),
            "age_days": round(elements.age_days(now), 2),
        },
        "anchor": None if anchor is None else {
            "shift_seconds": round(anchor.shift_s, 1),
            "residual_km": round(anchor.residual_km, 1),
            "agreement_km": round(anchor.agreement_km, 1),
        },
        "model_disagreement": disagreement,
        "sources": polling.sources_health(),
        "geography": {"loaded": polling.geography.loaded, "error": polling.geography_error},
    }
