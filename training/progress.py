from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from models import failpoint

Phase = Literal[
    "validating", "embedding", "training", "exporting", "evaluating", "publishing", "done"
]

# Share of the whole job each phase is expected to take; used for one overall fraction.
_PHASE_SPAN: dict[str, tuple[float, float]] = {
    "validating": (0.0, 0.02),
    "embedding": (0.02, 0.30),
    "training": (0.30, 0.85),
    "exporting": (0.85, 0.92),  # export, then evaluate the exported model: in that order
    "evaluating": (0.92, 0.97),
    "publishing": (0.97, 1.0),
    "done": (1.0, 1.0),
}


class Cancelled(Exception):
    """Raised inside `train` when its cancel check returns True; nothing is published."""


@dataclass(frozen=True)
class Progress:
    phase: Phase
    phase_fraction: float
    message: str = ""

    @property
    def fraction(self) -> float:
        start, end = _PHASE_SPAN[self.phase]
        return round(start + (end - start) * min(max(self.phase_fraction, 0.0), 1.0), 4)


ProgressCallback = Callable[[Progress], None]
CancelCheck = Callable[[], bool]


class Reporter:
    """Sends progress to a callback and checks for cancellation between steps."""

    def __init__(
        self, callback: ProgressCallback | None = None, cancel: CancelCheck | None = None
    ) -> None:
        self._callback = callback
        self._cancel = cancel
        self._log = logging.getLogger(__name__)

    def __call__(self, phase: Phase, phase_fraction: float, message: str = "") -> None:
        if self._cancel is not None and self._cancel():
            raise Cancelled(f"cancelled during {phase}")
        event = Progress(phase, phase_fraction, message)
        if message:
            self._log.debug("%s %.0f%% %s", phase, 100 * event.fraction, message)
        if self._callback is not None:
            self._callback(event)
        if phase_fraction > 0:
            failpoint(phase)  # reliability tests stop the process here, mid-phase
