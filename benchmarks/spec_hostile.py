"""What a hostile spec costs ``harness validate`` (issue 26): wall time and peak memory of each input.

Each input is validated by ``python -m harness validate SPEC`` in a fresh process; its peak resident memory is
that child's own ``ru_maxrss`` (``os.wait4``). The baseline row is a legitimate one-variant spec: the harness's
own cost (Python, torch, MLflow imports), which every row pays; ``above_baseline`` columns are what the input
adds. ``in_process_s`` is ``load_spec`` + ``expand`` of the input in this process, imports excluded: the spec
work alone. CPU seconds (the child's user + system time; ``process_time`` here) are given beside wall seconds:
on a shared machine the wall time grows with the load (``load_avg_1min``), CPU time far less. Rows run in
rounds, in turn, and keep their best (fewest seconds, least memory).

Inputs: the alias bomb ("billion laughs", 12 lines, 9^9 strings expanded), a grid of eight axes of ten values
(10^8 variants), a legitimate grid of 10,000 variants (four axes of ten), a 2 MB file, a file just under the 1 MiB
bound holding one list of 500,000 values (the slowest input within the file bound: PyYAML's pure-Python parser
reads up to the 100,000-value bound), ``train.lr: .inf`` and the override ``train.lr=.inf``.

    python benchmarks/spec_hostile.py [--repeats 3] [--rows alias-bomb,...] [--out results/bench/spec_hostile.csv]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
sys.path.insert(0, str(ROOT / "benchmarks"))

import pandas as pd  # noqa: E402
from step_speed import write_csv  # noqa: E402

from harness.data.corpora import resolve_data_dir  # noqa: E402
from harness.spec.expansion import expand, parse_overrides  # noqa: E402
from harness.spec.parsing import load_spec  # noqa: E402
from harness.spec.problems import SpecError  # noqa: E402
from harness.spec.reading import MAX_SPEC_BYTES  # noqa: E402

BASE = "name: {name}\nbase:\n  data: {{dataset: tinyshakespeare}}\n  train: {{steps: 10}}\n"
AXES = {  # ten typed-distinct values each
    "train.batch_size": list(range(8, 18)),
    "train.context_length": list(range(16, 26)),
    "train.lr": [round(0.001 * (i + 1), 4) for i in range(10)],
    "train.weight_decay": [round(0.01 * i, 2) for i in range(10)],
    "train.warmup_steps": list(range(10)),
    "train.grad_clip": [0.5 * i for i in range(10)],
    "train.min_lr": [round(0.0001 * i, 4) for i in range(10)],
    "sample.max_new_tokens": list(range(10)),
}


def _grid(name: str, axes: int) -> str:
    return BASE.format(name=name) + "grid:\n" + "".join(f"  {k}: {v}\n" for k, v in list(AXES.items())[:axes])


def _alias_bomb() -> str:
    lines = ["name: bomb", 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"{b}: &{b} [{','.join([f'*{a}'] * 9)}]" for a, b in zip("abcdefgh", "bcdefghi", strict=True)]
    return "\n".join(lines) + "\n"


def inputs() -> dict[str, tuple[str, list[str]]]:
    """``{row: (spec text, override words)}``; ``baseline`` first."""
    two_mb = BASE.format(name="big") + "description: >\n" + ("  " + "x" * 98 + "\n") * 20_000
    values = "name: values\nx: [" + "1," * (MAX_SPEC_BYTES // 2 - 16) + "1]\n"  # just under 1 MiB
    return {
        "baseline": (BASE.format(name="baseline"), []),
        "alias-bomb": (_alias_bomb(), []),
        "grid-10^8": (_grid("grid8", 8), []),
        "grid-10000": (_grid("grid4", 4), []),
        "file-2MB": (two_mb, []),
        "values-1MiB": (values, []),
        "lr-.inf": (BASE.format(name="inf").replace("steps: 10", "steps: 10, lr: .inf"), []),
        "override-lr=.inf": (BASE.format(name="override"), ["train.lr=.inf"]),
    }


def validate_process(spec: Path, words: list[str], data_dir: Path | None) -> tuple[int, float, float, float, str]:
    """(exit code, wall s, CPU s, peak RSS MB, first line of stderr) of ``python -m harness validate``."""
    command = [sys.executable, "-m", "harness", "validate", str(spec), *words]
    if data_dir is not None:
        command += ["--data-dir", str(data_dir)]
    start = time.perf_counter()
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        first = err.read().decode("utf-8", "replace").splitlines()[:1]
    cpu = usage.ru_utime + usage.ru_stime
    return proc.returncode, wall, cpu, usage.ru_maxrss / 1024, (first[0] if first else "")


def in_process(spec: Path, words: list[str], data_dir: Path | None) -> tuple[float, float]:
    """(wall s, CPU s) of ``load_spec`` + ``expand`` here."""
    start, cpu = time.perf_counter(), time.process_time()
    try:
        expand(load_spec(spec), parse_overrides(words), data_dir)
    except SpecError:
        pass
    return time.perf_counter() - start, time.process_time() - cpu


def main(argv: list[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="rounds (each row keeps its best)")
    parser.add_argument("--rows", default=None, help="comma-separated rows (baseline always runs)")
    parser.add_argument("--data-dir", type=Path, default=None, help="default: $HARNESS_DATA_DIR")
    parser.add_argument("--out", default=str(ROOT / "results" / "bench" / "spec_hostile.csv"))
    args = parser.parse_args(argv)
    data_dir = resolve_data_dir(args.data_dir)
    chosen = inputs()
    if args.rows:
        wanted = {"baseline", *args.rows.split(",")}
        chosen = {k: v for k, v in chosen.items() if k in wanted}
    best: dict[str, dict] = {}
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        for row, (text, _) in chosen.items():
            paths[row] = Path(tmp) / f"{row}.yaml"
            paths[row].write_text(text, encoding="utf-8")
        for _ in range(args.repeats):
            for row, (_, words) in chosen.items():
                code, wall, cpu, rss, message = validate_process(paths[row], words, data_dir)
                seconds, cpu_here = in_process(paths[row], words, data_dir)
                measured = {
                    "wall_s": wall,
                    "cpu_s": cpu,
                    "peak_rss_mb": rss,
                    "in_process_s": seconds,
                    "in_process_cpu_s": cpu_here,
                }
                old = best.get(row, measured)
                best[row] = {
                    "input": row,
                    "file_bytes": paths[row].stat().st_size,
                    "exit_code": code,
                    **{k: min(v, old[k]) for k, v in measured.items()},
                    "message": message.replace(str(paths[row]), f"{row}.yaml")[:160],
                }
    table = pd.DataFrame(best.values())
    base = table.set_index("input").loc["baseline"]
    table.insert(6, "cpu_above_baseline_s", table["cpu_s"] - base["cpu_s"])
    table.insert(7, "rss_above_baseline_mb", table["peak_rss_mb"] - base["peak_rss_mb"])
    table["repeats"] = args.repeats
    table["cpus"] = os.cpu_count()
    table["load_avg_1min"] = load  # the machine is shared: wall times grow with its load, CPU seconds far less
    table = table.round(3)
    write_csv(table, args.out)
    with pd.option_context("display.width", 250, "display.max_colwidth", 70):
        print(table.drop(columns=["message"]).to_string(index=False))
        print(table[["input", "message"]].to_string(index=False))
    return table


if __name__ == "__main__":
    main()
