"""How long operations report progress: numbered steps that a caller may draw as a bar.

The library only counts; the CLI draws (on stderr, and only on a terminal).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Step:
    """`description` starts now; `done` of the operation's `total` steps are finished."""

    description: str
    done: int
    total: int


StepCallback = Callable[[Step], None]


class Steps:
    """Numbers the steps of an operation and reports each as it starts.

    `total` may grow once the operation knows its size (a remote package's graphs are
    counted after it is fetched).
    """

    def __init__(self, total: int, on_step: StepCallback | None) -> None:
        self.total = total
        self.done = 0
        self._on_step = on_step

    def __call__(self, description: str) -> None:
        """Report that the next step, `description`, starts (the one before it is done)."""
        if self._on_step is not None:
            self._on_step(Step(description, self.done, self.total))
        self.done += 1
