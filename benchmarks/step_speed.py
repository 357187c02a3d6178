"""Step speed: the write-up's training loop vs the harness loop, and what MLflow logging costs.

For each corpus (tinyshakespeare, korean-chatbot) x model (bigram, ffn) x batch size (32, 128), at context
length 128 and AdamW lr 1e-3, two loops train the same model for the same number of steps:

- reference: the write-up's loop, written out below as it was written (batches stacked from a Python list,
  forward + cross_entropy over every position, ``zero_grad``, plain ``torch.optim.AdamW``);
- harness: what ``harness.train.Trainer.run`` does per step (``sample_starts``, ``step_loss``, grads to
  None, backward, fused AdamW), without its evaluations and logging.

Both start from identical weights (``torch.manual_seed`` before ``build_model``) and draw identical window
starts (checked before every row), so they must agree on every per-step loss. ``max_loss_diff`` is the largest
difference in float32, where AdamW amplifies rounding-order differences into ~1e-4..1e-3 after a few hundred
steps; ``max_loss_diff_fp64`` repeats the comparison in float64 (``--fp64-steps``), where only a difference
in the math could show. ``final_loss_diff`` compares the exact train-split loss (``harness.train.exact_loss``)
of the two trained models. Steps/s are timed from step ``warmup + 1`` to the last step: the first
``--warmup`` steps train (and are compared) but are not timed.

The logging figure: a ``--log-steps`` (50,000) English bigram B=32 run through ``Trainer.run`` with tracking
off (a sink that drops every point) and on (``harness.tracking.BufferedMetrics`` into a fresh SQLite MLflow
store in a temp dir), plus the cost of one ``log_metric`` call vs one point inside ``log_batch``.

``--precision bf16`` / ``--compile`` apply to the timed harness loop; each row then also trains the fp32 harness
and records ``final_loss_diff_vs_fp32`` (the issue's bar: <= 1e-2) and, with ``--compile``, ``compiled_graphs``
(0 means the row's training step never called the compiled function).

Run:
    make bench                      # = python benchmarks/step_speed.py (about 5-8 minutes on 2 idle CPU cores)
    make bench ARGS="--steps 50"    # a quick look
    python benchmarks/step_speed.py --device cuda --precision bf16 --compile --rows korean-chatbot,ffn
Writes results/bench/step_speed.csv and results/bench/logging_overhead.csv.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import re
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from harness.data.corpora import Corpus, DataConfig, load_corpus, resolve_data_dir  # noqa: E402
from harness.models.config import ModelConfig  # noqa: E402
from harness.models.registry import build_model
from harness.train.config import TrainConfig  # noqa: E402
from harness.train.device import pick_device
from harness.train.draws import WindowDraws
from harness.train.evaluation import exact_loss
from harness.train.trainer import Trainer

CORPORA = ("tinyshakespeare", "korean-chatbot")
MODELS = ("bigram", "ffn")
BATCH_SIZES = (32, 128)
CONTEXT_LENGTH = 128
LR = 1e-3
SEED = 1337
DEFAULT_STEPS = 200
DEFAULT_OUT = "results/bench/step_speed.csv"
BF16_COMPILE_TOLERANCE = 1e-2  # the issue's bar: bf16 / compile final loss vs the fp32 harness


@dataclass(frozen=True)
class Row:
    corpus: str
    model: str
    batch_size: int

    @property
    def name(self) -> str:
        return f"{self.corpus}/{self.model}/B{self.batch_size}"

    def matches(self, pattern: str) -> bool:
        """``korean-chatbot,ffn`` or ``tinyshakespeare/bigram/32``: every term must name one of the row's fields."""
        fields = {self.corpus, self.model, str(self.batch_size), f"B{self.batch_size}"}
        return all(term in fields for term in re.split(r"[,/:]", pattern) if term)


ALL_ROWS = [Row(c, m, b) for c in CORPORA for m in MODELS for b in BATCH_SIZES]


def select_rows(patterns: list[str] | None) -> list[Row]:
    if not patterns:
        return ALL_ROWS
    for pattern in patterns:
        if not any(row.matches(pattern) for row in ALL_ROWS):
            raise SystemExit(
                f"--rows {pattern!r} matches no row; terms are corpora {', '.join(CORPORA)}, "
                f"models {', '.join(MODELS)}, batch sizes {', '.join(map(str, BATCH_SIZES))} "
                "(e.g. korean-chatbot,ffn,32)"
            )
    return [row for row in ALL_ROWS if any(row.matches(p) for p in patterns)]


def steps_for(row: Row, default: int, overrides: list[str]) -> int:
    """``--row-steps PATTERN=N`` (last match wins): fewer steps for slow rows, the same for both loops."""
    steps = default
    for item in overrides:
        pattern, sep, count = item.rpartition("=")
        if not sep or not count.isdigit() or int(count) < 1:
            raise SystemExit(f"--row-steps {item!r}: expected PATTERN=N with N >= 1, e.g. korean-chatbot,ffn,128=100")
        if row.matches(pattern):
            steps = int(count)
    return steps


# -- timing -------------------------------------------------------------------------------------------


def write_csv(table: pd.DataFrame, path: str | Path) -> Path:
    """Write a benchmark table (its folder made if needed) and say where."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(path, index=False)
    print(f"wrote {path}")
    return path


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepClock:
    """Steps/s from the start of step ``warmup`` (0-based) to the end of the loop."""

    def __init__(self, device: torch.device, warmup: int):
        self.device = device
        self.warmup = warmup
        self.started = None

    def at_step(self, step: int) -> None:
        if step == self.warmup:
            synchronize(self.device)
            self.started = time.perf_counter()

    def steps_per_s(self, steps: int) -> float:
        synchronize(self.device)
        elapsed = time.perf_counter() - self.started
        return (steps - self.warmup) / elapsed if elapsed > 0 else float("nan")


# -- the two loops --------------------------------------------------------------------------------------


def reference_loop(
    model,
    data: torch.Tensor,
    batch_size: int,
    steps: int,
    warmup: int,
    device: torch.device,
    block_size: int = CONTEXT_LENGTH,
    lr: float = LR,
):
    """The write-up's loop (the lecture's too), kept as written so that the speedup is measured against what
    people ran."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(SEED)  # on the CPU, as the lecture's get_batch draws (and the Trainer)
    losses = torch.zeros(steps, device=device)
    clock = StepClock(device, warmup)
    for step in range(steps):
        clock.at_step(step)
        losses[step] = reference_step(model, optimizer, data, batch_size, block_size, g)
    return losses, clock.steps_per_s(steps)


def reference_step(model, optimizer, data: torch.Tensor, batch_size: int, block_size: int, g) -> torch.Tensor:
    """One step of the write-up's (and the lecture's) loop: get_batch, forward, zero_grad, backward, AdamW."""
    ix = torch.randint(len(data) - block_size, (batch_size,), generator=g)
    x = torch.stack([data[i : i + block_size] for i in ix])
    y = torch.stack([data[i + 1 : i + block_size + 1] for i in ix])
    logits, loss = model(x, y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


def harness_loop(trainer: Trainer, steps: int, warmup: int):
    """``Trainer.run``'s per-step work, without evaluation: the part whose speed the fast path is about."""
    losses = torch.zeros(steps, device=trainer.device)
    clock = StepClock(trainer.device, warmup)
    for step in range(steps):
        clock.at_step(step)
        losses[step] = harness_step(trainer, step)
    return losses, clock.steps_per_s(steps)


def harness_step(trainer: Trainer, step: int) -> torch.Tensor:
    """``Trainer.run``'s step ``step``: its window starts, the loss, grads to None, backward, fused AdamW."""
    loss = trainer.step_loss(trainer.sample_starts(step))
    for p in trainer.params:
        p.grad = None
    loss.backward()
    trainer.optimizer.step()
    return loss.detach()


def new_model(row: Row, corpus: Corpus, device: torch.device):
    torch.manual_seed(SEED)  # both loops start from these weights
    return build_model(ModelConfig(kind=row.model), corpus.tokenizer.vocab_size, CONTEXT_LENGTH).to(device)


def new_trainer(row: Row, corpus: Corpus, device: torch.device, steps: int, precision="fp32", compile=False) -> Trainer:
    config = TrainConfig(
        steps=steps,
        batch_size=row.batch_size,
        context_length=CONTEXT_LENGTH,
        lr=LR,
        seed=SEED,
        device=str(device),
        precision=precision,
        compile=compile,
    )
    return Trainer(new_model(row, corpus, device), corpus, config, device)


def check_same_windows(trainer: Trainer, data: torch.Tensor, device: torch.device, draws: int = 3) -> None:
    """The reference's ``randint`` must draw the Trainer's window starts, or the loss comparison means nothing."""
    g = torch.Generator().manual_seed(SEED)
    fresh = WindowDraws(
        trainer.n_windows, trainer.config.batch_size, trainer.config.seed, device
    )  # the Trainer's own draws
    for draw in range(draws):
        ref = torch.randint(len(data) - CONTEXT_LENGTH, (trainer.config.batch_size,), generator=g)
        if not torch.equal(ref, fresh(draw).cpu()):
            raise AssertionError(f"batch {draw}: the reference and the Trainer draw different window starts")


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype):
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max())


@torch.no_grad()
def train_split_loss(model, trainer: Trainer) -> float:
    return exact_loss(model, trainer.train_counts)


def run_harness(row: Row, trainer: Trainer, steps: int, warmup: int):
    """The harness loop; a failing ``torch.compile`` ends the benchmark with what to do, not a traceback."""
    try:
        return harness_loop(trainer, steps, warmup)
    except Exception as exc:
        if not trainer.config.compile:
            raise
        needs = "a C++ compiler (gcc/clang)" if trainer.device.type == "cpu" else "Triton"
        first_line = (str(exc).strip().splitlines() or [""])[0][:300]
        raise SystemExit(
            f"{row.name}: torch.compile failed on {trainer.device} ({type(exc).__name__}: {first_line}). "
            f"It needs {needs}; rerun without --compile."
        ) from exc


def compiled_graphs() -> int:
    """Graphs torch.compile has built so far in this process."""
    import torch._dynamo.utils

    return torch._dynamo.utils.counters["stats"]["unique_graphs"]


def bench_row(row: Row, corpus: Corpus, device: torch.device, args, steps: int) -> dict:
    warmup = min(args.warmup, steps // 2)
    data = corpus.train.to(device)

    ref_model = new_model(row, corpus, device)
    ref_losses, ref_speed = reference_loop(ref_model, data, row.batch_size, steps, warmup, device)

    plain = args.precision == "fp32" and not args.compile
    graphs_before = compiled_graphs() if args.compile else 0
    trainer = new_trainer(row, corpus, device, steps, args.precision, args.compile)
    check_same_windows(trainer, data, device)
    losses, speed = run_harness(row, trainer, steps, warmup)

    ref_final = train_split_loss(ref_model, trainer)
    final = train_split_loss(trainer.model, trainer)
    result = {
        "corpus": row.corpus,
        "model": row.model,
        "batch_size": row.batch_size,
        "steps": steps,
        "timed_steps": steps - warmup,
        "ref_steps_per_s": ref_speed,
        "harness_steps_per_s": speed,
        "speedup": speed / ref_speed,
        "max_loss_diff": max_abs_diff(ref_losses, losses),
        "final_loss_diff": abs(ref_final - final),
        "ref_final_loss": ref_final,
        "harness_final_loss": final,
        "precision": args.precision,
        "compile": args.compile,
    }
    if not plain:  # bf16 / compile must stay within 1e-2 of the fp32 harness (the issue's bar)
        if args.compile:  # 0: the compiled function was never called by this row's training step
            result["compiled_graphs"] = compiled_graphs() - graphs_before
        fp32_trainer = new_trainer(row, corpus, device, steps)
        _, fp32_speed = run_harness(row, fp32_trainer, steps, warmup)
        result["harness_fp32_steps_per_s"] = fp32_speed
        result["final_loss_diff_vs_fp32"] = abs(final - train_split_loss(fp32_trainer.model, fp32_trainer))

    result["fp64_steps"] = args.fp64_steps
    result["max_loss_diff_fp64"] = float("nan")
    if args.fp64_steps > 0:
        with default_dtype(torch.float64):
            ref64, _ = reference_loop(new_model(row, corpus, device), data, row.batch_size, args.fp64_steps, 0, device)
            harness64, _ = harness_loop(new_trainer(row, corpus, device, args.fp64_steps), args.fp64_steps, 0)
        result["max_loss_diff_fp64"] = max_abs_diff(ref64, harness64)
    return result


# -- logging overhead ---------------------------------------------------------------------------------


class DroppingSink:
    """Tracking off: the Trainer still produces every point; nothing stores it."""

    def log(self, key: str, value: float, step: int) -> None:
        pass


def logging_overhead(corpus: Corpus, device: torch.device, args) -> dict:
    """Wall time of the same Trainer.run with tracking off and on, and MLflow's per-call costs."""
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    from harness.tracking.store import BufferedMetrics

    row = Row("tinyshakespeare", "bigram", 32)

    def timed_run(sink, steps: int) -> float:
        trainer = new_trainer(row, corpus, device, steps)
        started = time.perf_counter()
        trainer.run(sink)
        if isinstance(sink, BufferedMetrics):
            sink.flush()
            sink.client.set_terminated(sink.run_id)
        synchronize(device)
        return time.perf_counter() - started

    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)  # "Creating initial MLflow database tables"
    with tempfile.TemporaryDirectory(prefix="step-speed-mlflow-") as tmp:
        client = MlflowClient(f"sqlite:///{Path(tmp) / 'mlflow.db'}")
        experiment_id = client.create_experiment("step-speed", artifact_location=(Path(tmp) / "artifacts").as_uri())

        timed_run(DroppingSink(), min(args.log_steps, 1000))  # warm-up, untimed
        off, on, points = [], [], 0
        for _ in range(args.log_repeats):  # interleaved, best of each: less sensitive to load drifting
            off.append(timed_run(DroppingSink(), args.log_steps))
            sink = BufferedMetrics(client, client.create_run(experiment_id, run_name="tracking-on").info.run_id)
            on.append(timed_run(sink, args.log_steps))
            points = sink.logged

        probe = client.create_run(experiment_id, run_name="per-call-cost").info.run_id
        n_single, n_batched = 200, 1000
        started = time.perf_counter()
        for i in range(n_single):
            client.log_metric(probe, "single", float(i), step=i)
        per_call = (time.perf_counter() - started) / n_single
        now_ms = int(time.time() * 1000)
        batch = [Metric("batched", float(i), now_ms, i) for i in range(n_batched)]
        started = time.perf_counter()
        client.log_batch(probe, metrics=batch)
        per_point = (time.perf_counter() - started) / n_batched
        client.set_terminated(probe)

    import mlflow

    return {
        "log_steps": args.log_steps,
        "repeats": args.log_repeats,
        "wall_s_tracking_off": min(off),
        "wall_s_tracking_on": min(on),
        "overhead_pct": 100 * (min(on) / min(off) - 1),
        "metric_points": points,
        "log_metric_ms_per_call": 1000 * per_call,
        "log_batch_ms_per_point": 1000 * per_point,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "mlflow_version": mlflow.__version__,
    }


# -- main ---------------------------------------------------------------------------------------------


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="steps per loop and row (default %(default)s)")
    parser.add_argument(
        "--row-steps",
        action="append",
        default=[],
        metavar="PATTERN=N",
        help="steps for matching rows, e.g. korean-chatbot,ffn,128=100 (both loops of the row)",
    )
    parser.add_argument("--warmup", type=int, default=10, help="untimed first steps (at most half of the steps)")
    parser.add_argument("--fp64-steps", type=int, default=50, help="steps of the float64 loss comparison (0: skip)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"))
    parser.add_argument(
        "--rows",
        nargs="+",
        metavar="PATTERN",
        help="only these rows: terms joined by commas must all match, e.g. korean-chatbot,ffn tinyshakespeare,32",
    )
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"), help="the harness loop's precision")
    parser.add_argument("--compile", action="store_true", help="torch.compile in the harness loop")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--out", default=DEFAULT_OUT, help="CSV of the step-speed table (default %(default)s)")
    parser.add_argument("--log-out", help="CSV of the logging figure (default: logging_overhead.csv next to --out)")
    parser.add_argument("--skip-logging", action="store_true", help="skip the MLflow logging-overhead figure")
    parser.add_argument("--log-steps", type=int, default=50_000, help="steps of the logging-overhead runs")
    parser.add_argument("--log-repeats", type=int, default=2, help="off/on pairs of the logging runs (best of each)")
    parser.add_argument("--data-dir", help="folder holding the datasets (default: HARNESS_DATA_DIR, else download)")
    args = parser.parse_args(argv)
    for key in ("steps", "log_steps", "log_repeats"):
        if getattr(args, key) < 1:
            parser.error(f"--{key.replace('_', '-')} must be >= 1")
    if args.warmup < 0 or args.fp64_steps < 0 or args.threads < 0:
        parser.error("--warmup, --fp64-steps and --threads must be >= 0")
    return args


def main(argv: list[str] | None = None) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    data_dir = resolve_data_dir(args.data_dir)
    rows = select_rows(args.rows)
    row_steps = {row: steps_for(row, args.steps, args.row_steps) for row in rows}  # bad overrides fail first

    print(
        f"step speed on {device} ({torch.get_num_threads()} threads, torch {torch.__version__}); steps/s timed "
        f"after the first min({args.warmup}, steps // 2) steps of each loop (they still train and are compared)"
    )
    results = []
    for row in rows:
        corpus = load_corpus(DataConfig(dataset=row.corpus), data_dir)
        started = time.perf_counter()
        r = bench_row(row, corpus, device, args, row_steps[row])
        r.update(
            row_wall_s=time.perf_counter() - started,
            device=str(device),
            threads=torch.get_num_threads(),
            torch_version=torch.__version__,
        )
        results.append(r)
        print(
            f"  {row.name:<30} reference {r['ref_steps_per_s']:8.1f}/s  harness {r['harness_steps_per_s']:8.1f}/s"
            f"  x{r['speedup']:6.1f}  max|dloss| {r['max_loss_diff']:.1e} (fp64 {r['max_loss_diff_fp64']:.1e})"
            f"  final {r['final_loss_diff']:.1e}",
            flush=True,
        )
        if "final_loss_diff_vs_fp32" in r:
            verdict = "ok" if r["final_loss_diff_vs_fp32"] <= BF16_COMPILE_TOLERANCE else "ABOVE"
            graphs = f", {r['compiled_graphs']} compiled graphs" if "compiled_graphs" in r else ""
            print(
                f"  {'':<30} {args.precision}{' + compile' if args.compile else ''} vs fp32 harness: "
                f"final {r['final_loss_diff_vs_fp32']:.1e} ({verdict} for {BF16_COMPILE_TOLERANCE:g}){graphs}"
            )

    table = pd.DataFrame(results)
    shown = [c for c in table.columns if c not in ("device", "threads", "torch_version", "precision", "compile")]
    print()
    print(table[shown].to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    out = write_csv(table, args.out)

    overhead = None
    if not args.skip_logging:
        corpus = load_corpus(DataConfig(dataset="tinyshakespeare"), data_dir)
        overhead = pd.DataFrame([logging_overhead(corpus, device, args)])
        write_csv(overhead, Path(args.log_out) if args.log_out else out.parent / "logging_overhead.csv")
        o = overhead.iloc[0]
        verdict = "within" if o.overhead_pct <= 3 else "ABOVE"
        print(
            f"\nlogging overhead, {o.log_steps} steps tinyshakespeare/bigram/B32 (best of {o.repeats}): "
            f"off {o.wall_s_tracking_off:.2f}s, on {o.wall_s_tracking_on:.2f}s -> {o.overhead_pct:+.1f}% "
            f"({verdict} the 3% target; {o.metric_points} points)"
        )
        print(
            f"one log_metric call {o.log_metric_ms_per_call:.2f} ms; one point in log_batch "
            f"{o.log_batch_ms_per_point:.4f} ms ({o.log_metric_ms_per_call / o.log_batch_ms_per_point:.0f}x cheaper)"
        )
    return table, overhead


if __name__ == "__main__":
    main()
