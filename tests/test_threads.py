"""--executor threads: units trained side by side in one process end exactly where each ends alone.

The reference is the same sweep in this process, one unit after the other (the default executor). On a CPU the
threads really overlap (torch ops release the GIL), so the seeding, model building and global-generator rules of
harness/executors/threads.py are exercised; the CUDA streams they add are a no-op here, so their rule (a running
unit's stream is no other unit's) is checked against a stand-in of PyTorch's stream pool.
"""

from __future__ import annotations

import contextlib
import textwrap

import pytest
import torch
from mlflow.tracking import MlflowClient

from harness.cli import main
from harness.executors.threads import WorkerStreams, draws_random_while_training
from harness.metrics import mlflow_key
from harness.spec.expansion import expand
from harness.spec.parsing import load_spec
from harness.tracking.store import PARENT_TAG

# Tiny GPTs with and without dropout, English and Korean, two seeds: units that draw from the global generator
# while training (dropout 0.2) beside units that do not, alone or stacked, and enough units for 3 threads to overlap.
SPEC = textwrap.dedent("""
    name: {name}
    base:
      data: {{dataset: tinyshakespeare}}
      model: {{kind: gpt, n_layer: 1, n_head: 2, n_embd: 16}}
      train: {{steps: 60, batch_size: 8, context_length: 16, eval_interval: 20, device: cpu, threads: 1}}
      sample: {{max_new_tokens: 10}}
    grid:
      model.dropout: [0.0, 0.2]
      data.dataset: [tinyshakespeare, korean-chatbot]
""")


def _sweep(tmp_path, data_dir, name: str, *extra: str) -> dict[str, object]:
    spec = tmp_path / f"{name}.yaml"
    spec.write_text(SPEC.format(name=name), encoding="utf-8")
    assert (
        main(
            [
                "run",
                str(spec),
                "--seeds",
                "1",
                "2",
                "--data-dir",
                str(data_dir),
                "--no-progress",
                "--results-dir",
                str(tmp_path / "results"),
                *extra,
            ]
        )
        == 0
    )
    client = MlflowClient()
    experiment_id = client.get_experiment_by_name(name).experiment_id
    return {r.data.tags["variant"]: r for r in client.search_runs([experiment_id]) if PARENT_TAG in r.data.tags}


@pytest.mark.slow
@pytest.mark.parametrize("stack", ["null", "true"])  # on a CPU null stacks a GPT's seeds only; true stacks them all
def test_units_trained_by_threads_end_as_they_end_one_after_the_other(tmp_path, data_dir, mlflow_store, stack):
    threaded = _sweep(
        tmp_path, data_dir, "threaded", "--executor", "threads", "--jobs", "3", f"train.stack_seeds={stack}"
    )
    serial = _sweep(tmp_path, data_dir, "serial", f"train.stack_seeds={stack}")
    client = MlflowClient()
    assert len(threaded) == len(serial) == 8
    for run in threaded.values():
        native = run.data.params["model.kind"] == "gpt" and float(run.data.params["model.dropout"]) == 0  # gpt_stack
        assert run.data.tags.get("stacked_seeds") == ("1,2" if stack == "true" or native else None), run.data.params
    for variant, run in threaded.items():
        assert run.info.status == "FINISHED", (variant, run.data.tags.get("error"))
        for key in ("loss/batch", "loss/train", "loss/val"):
            got = [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)]
            want = [(m.step, m.value) for m in client.get_metric_history(serial[variant].info.run_id, key)]
            assert sorted(got) == sorted(want), (variant, key)
        final = mlflow_key("final_val_loss")
        assert run.data.metrics[final] == serial[variant].data.metrics[final]
    # the seeds and the dropout runs really differ: the comparison above is not between copies of one run
    assert len({round(r.data.metrics[mlflow_key("final_val_loss")], 6) for r in threaded.values()}) == 8


def test_only_units_whose_steps_draw_random_numbers_wait_to_train_alone(tmp_path):
    spec = tmp_path / "dropout.yaml"
    spec.write_text(SPEC.format(name="dropout"), encoding="utf-8")
    waits = {v.config.model.dropout: draws_random_while_training([v]) for v in expand(load_spec(spec))}
    assert waits == {0.0: False, 0.2: True}


class PooledStream:
    """``torch.cuda.Stream()`` as PyTorch hands streams out: from a pool of 32 per device, round-robin, so the
    33rd is the 1st again (its "Stream pool note")."""

    drawn = 0

    def __init__(self, device=None, priority: int = 0):
        self.cuda_stream = 0x7F00 + PooledStream.drawn % 32  # the CUDA stream handle
        PooledStream.drawn += 1


def test_a_running_unit_keeps_a_stream_that_no_other_unit_gets(monkeypatch):
    """On an H200, units that drew fresh streams got one another's (the 33rd draw is the 1st's stream): one unit's
    kernels then landed in another's graph capture."""
    monkeypatch.setattr(torch.cuda, "Stream", PooledStream)
    monkeypatch.setattr(PooledStream, "drawn", 5)  # whatever was drawn before the sweep
    streams, gpu = WorkerStreams(8), torch.device("cuda", 0)
    with streams.held(gpu) as long_running:
        held_by_others = []
        for _ in range(40):  # 80 units start and end while the first one trains
            with streams.held(gpu) as first, streams.held(gpu) as second:
                assert first.cuda_stream != second.cuda_stream
                held_by_others += [first.cuda_stream, second.cuda_stream]
        assert long_running.cuda_stream not in held_by_others


def test_eight_units_at_once_hold_eight_different_streams(monkeypatch):
    monkeypatch.setattr(torch.cuda, "Stream", PooledStream)
    monkeypatch.setattr(PooledStream, "drawn", 29)  # the pool wraps around while the streams are drawn
    streams, gpu = WorkerStreams(8), torch.device("cuda", 0)
    with contextlib.ExitStack() as holding:
        handles = [holding.enter_context(streams.held(gpu)).cuda_stream for _ in range(8)]
    assert len(set(handles)) == 8
