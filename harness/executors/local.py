"""In this process, one unit after the other (the default)."""

from __future__ import annotations

from harness.executors.base import could_not_start, interrupted
from harness.tracking.recorded import run_unit


class InProcessExecutor:
    name = "local"

    def prepare(self) -> None:
        pass

    def run(self, units, train_kwargs: dict, on_result) -> None:
        for unit in units:
            try:
                results = run_unit(unit, **train_kwargs)
            except KeyboardInterrupt:  # its runs are closed KILLED; the sweep reports them as the other executors do
                for result in interrupted(unit):
                    on_result(result)
                raise
            except Exception as exc:  # the runs could not even be opened; the next units still train
                results = could_not_start(unit, exc)
            for result in results:
                on_result(result)
