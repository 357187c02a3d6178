"""What every executor is: the ``Executor`` interface, its error, and the results of units that never ran."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from harness.spec.problems import SpecError
from harness.spec.records import Variant
from harness.tracking.recorded import VariantResult


class ExecutorError(SpecError):
    """The executor cannot start (missing package, unreachable cluster); raised before any run exists (exit 2)."""


class Executor(Protocol):
    name: str

    def prepare(self) -> None: ...

    def run(
        self, units: list[list[Variant]], train_kwargs: dict, on_result: Callable[[VariantResult], None]
    ) -> None: ...


def could_not_start(unit: list[Variant], exc: Exception) -> list[VariantResult]:
    """The results of a unit whose runs could not even be opened (the next units still train)."""
    return [VariantResult(v.id, "", "FAILED", {}, f"could not start: {type(exc).__name__}: {exc}") for v in unit]


def interrupted(unit: list[Variant]) -> list[VariantResult]:
    """The results of a unit stopped by Ctrl-C in a worker (its runs, if opened, are closed KILLED already)."""
    return [VariantResult(v.id, "", "KILLED", {}, "interrupted (Ctrl-C)") for v in unit]
