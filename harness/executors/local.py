"""In this process, one variant after the other (the default)."""

from __future__ import annotations

from harness.tracking import VariantResult, run_variant


class InProcessExecutor:
    name = "local"

    def prepare(self) -> None:
        pass

    def run(self, variants, train_kwargs: dict, on_result) -> None:
        for variant in variants:
            try:
                result = run_variant(variant, **train_kwargs)
            except Exception as exc:  # the run could not even be opened; the next variants still train
                result = VariantResult(variant.id, "", "FAILED", {}, f"could not start: {type(exc).__name__}: {exc}")
            on_result(result)
