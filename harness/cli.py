"""``harness validate|run|report|plan|sample|register|schema|reference``: the command line around specs, sweeps,
reports, seed plans and the trained models (``sample`` draws text from a run's logged model, ``register`` names
the best one).

Exit codes: 0 all variants FINISHED (or skipped as already finished); 1 some variant failed;
2 a problem with the spec, data or tracking store, found before anything trained; 3 the tracking server stopped
answering mid-sweep for longer than HARNESS_SERVER_WAIT_S (the variants it could not record are named); 130 Ctrl-C
or SIGTERM; 141 the reader of
its output went away (``harness validate SPEC | head``), as a shell reports a command ended by SIGPIPE.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import shlex
import signal
import sys
from pathlib import Path

EXIT_FAILED_VARIANTS = 1
EXIT_BAD_INPUT = 2
EXIT_TRACKING_LOST = 3
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141
DEFAULT_MAX_SEEDS = 16
OVERRIDE_WORD = re.compile(r"^[A-Za-z_]\w*(\.\w+)+=")  # section.key=value, as in train.steps=200


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="harness", description="Ablation sweeps for character-level language models.")
    sub = parser.add_subparsers(dest="command", required=True)

    def add_plan_options(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--max-seeds", type=int, default=None, help=f"seeds per variant at most (default {DEFAULT_MAX_SEEDS})"
        )
        p.add_argument("--delta", type=float, default=None, help="δ in nats (default: the spec's practical_difference)")

    def add_spec(p: argparse.ArgumentParser) -> None:
        p.add_argument("spec", type=Path, help="experiment spec, e.g. experiments/seed.yaml")
        p.add_argument(
            "overrides",
            nargs="*",
            metavar="key=value",
            help="applied to every variant, winning over the grid (e.g. train.steps=200)",
        )
        p.add_argument(
            "--seeds",
            type=int,
            nargs="+",
            default=None,
            metavar="N",
            help="repeat every variant per seed (replaces the spec's seeds)",
        )
        p.add_argument(
            "--data-dir",
            type=Path,
            default=None,
            help="folder that already holds the dataset files (default: $HARNESS_DATA_DIR, else download)",
        )

    validate = sub.add_parser("validate", help="check a spec and list its variants; trains nothing")
    add_spec(validate)

    run = sub.add_parser("run", help="train every variant, log to MLflow, write results/<name>/runs.csv")
    add_spec(run)
    run.add_argument("--results-dir", type=Path, default=Path("results"))
    run.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="units trained at once (worker processes, or threads with --executor threads)",
    )
    run.add_argument(
        "--executor",
        choices=("local", "threads", "ray", "slurm"),
        default="local",
        help="local: this process, or --jobs worker processes; threads: --jobs threads of this process, "
        "each on its own CUDA stream (units run side by side on one GPU); ray: one Ray task per variant; "
        "slurm: one SLURM job array, a task per unit (docs/past-one-machine.md)",
    )
    run.add_argument("--ray-address", default=None, help="Ray cluster address (default: start a local Ray)")
    slurm = run.add_argument_group("--executor slurm (each task of the array)")
    slurm.add_argument("--slurm-partition", default=None, help="partition (default: the cluster's default)")
    slurm.add_argument("--slurm-time", type=int, default=60, metavar="MIN", help="time limit in minutes (default 60)")
    slurm.add_argument("--slurm-gpus", type=int, default=0, help="GPUs per task (default 0)")
    slurm.add_argument("--slurm-cpus", type=int, default=1, help="CPUs per task, torch's threads (default 1)")
    slurm.add_argument(
        "--slurm-parallelism", type=int, default=64, metavar="N", help="tasks running at once at most (default 64)"
    )
    slurm.add_argument(
        "--slurm-signal-delay",
        type=int,
        default=90,
        metavar="S",
        help="SLURM's warning signal this many seconds before the time limit: checkpoint and requeue (default 90)",
    )
    slurm.add_argument(
        "--slurm-folder", type=Path, default=Path(".harness") / "slurm", help="submitit's files and the task logs"
    )
    slurm.add_argument(
        "--slurm-shared-store",
        action="store_true",
        help="the SQLite tracking store is on a file system every node mounts (else a tracking server is required)",
    )
    run.add_argument("--force", action="store_true", help="rerun variants that already FINISHED")
    run.add_argument("--checkpoint-dir", type=Path, default=Path(".harness") / "checkpoints")
    run.add_argument(
        "--checkpoint-store",
        choices=("local", "mlflow"),
        default="local",
        help="local: files in --checkpoint-dir; mlflow: the run's artifacts, so another machine can resume it",
    )
    run.add_argument("--dry-run", action="store_true", help="same as validate")
    run.add_argument(
        "--until-decided",
        action="store_true",
        help="the spec's seeds are a pilot: then Stein's plan from their spreads, the seeds it needs (at most "
        "--max-seeds), and the report's final verdicts from all of them",
    )
    add_plan_options(run)
    run.add_argument("--no-progress", action="store_true", help="no progress bars")

    report = sub.add_parser(
        "report",
        help="rebuild results/<name>/ from MLflow alone (overrides and seeds default to those of the last sweep)",
    )
    add_spec(report)
    report.add_argument("--results-dir", type=Path, default=Path("results"))
    report.add_argument(
        "--from-csv",
        type=Path,
        default=None,
        metavar="RUNS_CSV",
        help="rebuild the report in a runs.csv's folder from it instead of MLflow (e.g. a committed "
        "results/<name>/runs.csv): the statistics and tables anew; the loss curves and samples, which runs.csv lacks, "
        "kept from the report there; overrides and seeds read off the table unless given",
    )

    plan = sub.add_parser(
        "plan",
        help="Stein's two-stage plan from what MLflow holds for the spec: the seeds undecided effects need and the "
        "one command that trains them",
    )
    add_spec(plan)
    add_plan_options(plan)

    sample = sub.add_parser(
        "sample",
        help="generate text from a finished run's logged model: a run id, or a spec and a filter of its variants",
        description="Generate text from a run's logged model. At temperature 1, no top-k, the run's seed and prompt "
        "(the defaults) it prints the sample the run logged.",
    )
    sample.add_argument("target", help="a run id, or a spec (experiments/seed.yaml) whose runs the filter picks from")
    sample.add_argument(
        "filters",
        nargs="*",
        metavar="key=value",
        help="with a spec: which variant, e.g. kind=ffn,dataset=korean-chatbot (short or dotted keys, as variant ids)",
    )
    sample.add_argument("--prompt", default=None, help="the start of the text (default: the run's sample.prompt)")
    sample.add_argument(
        "--max-new-tokens", type=int, default=None, help="tokens to generate (default: the run's sample.max_new_tokens)"
    )
    sample.add_argument("--temperature", type=float, default=1.0, help="divides the logits (default 1: as trained)")
    sample.add_argument(
        "--top-k", type=int, default=None, help="sample among the k likeliest tokens only (default: all)"
    )
    sample.add_argument("--num-samples", type=int, default=1, help="samples to draw, one after another (default 1)")
    sample.add_argument("--seed", type=int, default=None, help="the generator's seed (default: the run's train.seed)")

    register = sub.add_parser(
        "register",
        help="register the spec's best variant (lowest mean over seeds) in the Model Registry, alias champion",
    )
    add_spec(register)
    register.add_argument(
        "--metric",
        default="final_val_loss",
        help="what best means, lower is better: final_val_loss (default), final_val_bpc, final_train_loss, "
        "final_train_bpc",
    )

    schema = sub.add_parser(
        "schema", help="write experiments/spec.schema.json, the JSON Schema of a spec (make schema)"
    )
    schema.add_argument("--check", action="store_true", help="exit 1 if the committed schema is not current")

    reference = sub.add_parser(
        "reference", help="write docs/spec-reference.md, every key with its type, default and meaning (make schema)"
    )
    reference.add_argument("--check", action="store_true", help="exit 1 if the committed page is not current")
    return parser


def _print_variants(spec, variants) -> None:
    print(f"{spec.path}: experiment {spec.name!r}, {len(variants)} variant(s)")
    for variant in variants:
        cfg = variant.config
        print(f"  {variant.id:<60} steps={cfg.train.steps} hash={cfg.config_hash()}")


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:  # `| head` read what it wanted: no traceback, and nothing more to write
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


def _main(argv: list[str] | None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = _parser()
    # key=value words anywhere, in their order: argparse would stop at the first option, or read them as the
    # values of one (`--seeds 1 2 train.steps=10`).
    overrides = [word for word in argv if OVERRIDE_WORD.match(word)]
    args, extra = parser.parse_known_args([word for word in argv if not OVERRIDE_WORD.match(word)])
    stray = [word for word in extra if word.startswith("-") or "=" not in word]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    args.overrides = [*getattr(args, "overrides", []), *extra, *overrides]
    args.command_line = shlex.join(["harness", *argv])
    if args.command == "schema":
        return _schema(args.check)
    if args.command == "reference":
        return _reference(args.check)
    if args.command == "sample":
        args.filters = [*args.filters, *args.overrides]  # model.kind=ffn reads as an override word: a filter here
        return _sample(args)
    # Imports after parsing, so that --help is instant.
    from harness.data.corpora import DataError, resolve_data_dir
    from harness.report.tables import ReportError
    from harness.spec.expansion import expand, parse_overrides, with_seeds
    from harness.spec.parsing import load_spec
    from harness.spec.problems import SpecError
    from harness.tracking.store import TrackingError

    problem = _plan_problem(args)
    if problem:
        print(f"error: {problem}; nothing was run", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        spec = load_spec(args.spec)
        data_dir = resolve_data_dir(args.data_dir)
        overrides = parse_overrides(args.overrides)
        if args.command == "report":
            if args.from_csv is not None:
                return _report_from_csv(spec, overrides, args.seeds, args.results_dir, args.from_csv)
            return _report(spec, overrides, args.seeds, args.results_dir)
        if args.command == "register":
            return _register(spec, overrides, args.seeds, args.metric)
        if args.command == "plan":
            return _plan(spec, overrides, args.seeds, args.delta, args.max_seeds or DEFAULT_MAX_SEEDS)
        if getattr(args, "until_decided", False):
            _check_pilot(spec, args)
        args.spec_as_written = spec  # the report tells the spec's own seeds from --seeds
        spec = with_seeds(spec, args.seeds)
        variants = expand(spec, overrides, data_dir)
        if args.command == "validate" or args.dry_run:
            from harness.sweep import preflight

            preflight(variants, data_dir)
            _print_variants(spec, variants)
            if spec.tune is not None:
                print(_tune_line(spec, variants))
            return 0
        return _run(spec, variants, overrides, args, data_dir)
    except SpecError as exc:
        # One line per problem, `file:line:column: key: message`, so editors can jump to each.
        for line in exc.problems:
            print(line, file=sys.stderr)
        count = len(exc.problems)
        print(f"error: {count} problem{'s' if count > 1 else ''} in {args.spec}; nothing was run", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (DataError, TrackingError, ReportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _plan_problem(args) -> str | None:
    """What is wrong with --delta, --max-seeds and --until-decided on their own (before the spec is read)."""
    delta = getattr(args, "delta", None)
    if delta is not None and not (math.isfinite(delta) and delta > 0):
        return f"--delta must be a number of nats > 0, got {delta:g}"
    max_seeds = getattr(args, "max_seeds", None)
    if max_seeds is not None and max_seeds < 2:
        return f"--max-seeds must be at least 2, got {max_seeds}"
    if args.command == "run" and not args.until_decided and (max_seeds is not None or delta is not None):
        return "--max-seeds and --delta go with --until-decided (or use `harness plan`)"
    if args.command == "run" and args.until_decided and args.seeds is not None:
        return "--until-decided takes its pilot from the spec's own seeds; drop --seeds (or write them in the spec)"
    return None


def _check_pilot(spec, args) -> None:
    """--until-decided needs a pilot of MIN_PILOT_SEEDS seeds or more, and a --max-seeds not below it (a SpecError:
    exit 2)."""
    from harness.report.verdicts import MIN_PILOT_SEEDS
    from harness.spec.problems import SpecError

    pilot = list(spec.seeds or [])
    if len(pilot) < MIN_PILOT_SEEDS:
        raise SpecError(
            f"{spec.path}: --until-decided needs a pilot of at least {MIN_PILOT_SEEDS} seeds, the spec's `seeds` "
            f"(it has {len(pilot) or 'none'}: too few to plan from)"
        )
    max_seeds = args.max_seeds or DEFAULT_MAX_SEEDS
    if max_seeds < len(pilot):
        raise SpecError(f"{spec.path}: --max-seeds {max_seeds} is below the pilot's {len(pilot)} seeds")


def _schema(check: bool) -> int:
    from harness.spec.schema import SCHEMA_PATH, schema_text

    return _generated(SCHEMA_PATH, schema_text(), check)


def _reference(check: bool) -> int:
    from harness.spec.reference import REFERENCE_PATH, reference_text

    return _generated(REFERENCE_PATH, reference_text(), check)


def _generated(path: Path, text: str, check: bool) -> int:
    """Write a file generated from the code (``make schema``); with ``check``, exit 1 if the committed one differs."""
    if check:
        current = path.is_file() and path.read_text(encoding="utf-8") == text
        print(f"{path}: {'current' if current else 'out of date; run make schema'}")
        return 0 if current else 1
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    print(f"wrote {path}")
    return 0


def _report(spec, overrides: dict, seeds: list[int] | None, results_dir: Path, delta: float | None = None) -> int:
    """Rebuild results/<name>/ (CSVs, plots, report.md) from MLflow; without overrides or seeds, the last sweep's."""
    from harness.report.tables import experiment_runs, format_table, last_sweep_arguments, write_report
    from harness.spec.expansion import expand, with_seeds
    from harness.tracking.store import tracking_uri

    uri = tracking_uri()
    runs = experiment_runs(uri, spec)
    if not overrides and seeds is None:
        overrides, seeds = last_sweep_arguments(runs)
    variants = expand(with_seeds(spec, seeds), overrides)
    tuning = untuned = None
    if spec.tune is not None:  # the report is of each variant at its chosen point: the choice replayed from MLflow
        from harness.tuning import resolve

        tuned = resolve(spec, variants, uri, log=lambda line: None)
        variants, tuning, untuned = tuned.decide, tuned.result, tuned.untuned or None
        if not variants:
            from harness.report.tables import ReportError

            raise ReportError(
                f"{spec.path}: no variant has finished its tuning yet; `harness run {spec.path}` trains what is left"
            )
    report = write_report(
        uri,
        spec,
        variants,
        results_dir,
        runs,
        overrides=overrides,
        seeds=seeds,
        delta=delta,
        tuning=tuning,
        untuned=untuned,
    )
    print(format_table(report.runs))
    for warning in report.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"wrote {report.directory}/: {', '.join(path.name for path in report.files)}")
    return 0


def _report_from_csv(spec, overrides: dict, seeds: list[int] | None, results_dir: Path, path: Path) -> int:
    """Rebuild a report from its runs.csv (no MLflow store): overrides and seeds as given, else read off the table."""
    from harness.report.tables import ReportError, format_table, read_runs_csv, recorded_arguments, write_report
    from harness.spec.expansion import expand, with_seeds

    if spec.tune is not None:
        raise ReportError(
            f"{spec.path} tunes its variants: their choices and tuning runs live in MLflow, not in runs.csv; "
            f"rebuild its report with `harness report {spec.path}` from the store"
        )
    if not overrides and seeds is None:
        overrides, seeds = recorded_arguments(spec, read_runs_csv(path))
    variants = expand(with_seeds(spec, seeds), overrides)
    report = write_report("", spec, variants, results_dir, overrides=overrides, seeds=seeds, from_csv=path)
    print(format_table(report.runs))
    print(f"wrote {report.directory}/: {', '.join(p.name for p in report.files)}")
    return 0


def _plan(spec, overrides: dict, seeds: list[int] | None, delta: float | None, max_seeds: int) -> int:
    """Print Stein's plan from the pilot recorded in MLflow: each undecided effect's seeds and the one command."""
    from harness.report.tables import plan_from_store

    for line in plan_from_store(spec, overrides, seeds, delta, max_seeds, _tuned_adjust(spec)):
        print(line)
    return 0


def _register(spec, overrides: dict, seeds: list[int] | None, metric: str) -> int:
    """Register the best variant under the spec's name and point the alias ``champion`` at it."""
    from harness.report.champion import ALIAS, METRICS, register_champion
    from harness.report.tables import ReportError, experiment_runs, last_sweep_arguments
    from harness.spec.expansion import expand, with_seeds
    from harness.tracking.store import tracking_uri

    if metric not in METRICS:  # before the store is read: a bad option changes nothing
        raise ReportError(f"unknown metric {metric!r} for register; choices: {', '.join(METRICS)} (lower is better)")
    uri = tracking_uri()
    runs = experiment_runs(uri, spec)
    if not overrides and seeds is None:
        overrides, seeds = last_sweep_arguments(runs)
    variants = expand(with_seeds(spec, seeds), overrides)
    adjust = _tuned_adjust(spec)  # a tuned spec's variants are each at its chosen point, as its report's are
    choice = register_champion(uri, spec, adjust(variants) if adjust else variants, runs, metric)
    tags = choice.tags
    how = "registered as" if choice.created else "already registered as"
    print(
        f"{choice.variant} (run {choice.run_id}, model {choice.model_id}) {how} {choice.name} version {choice.version}"
    )
    print(f"  best setting {tags['harness.setting']}: mean {metric} {tags['harness.mean']}, {tags['harness.ci95']}")
    if "harness.runner_up_mean" in tags:
        runner_up = tags["harness.runner_up"]
        print(f"  runner-up {runner_up}: mean {tags['harness.runner_up_mean']}, {tags['harness.runner_up_ci95']}")
    moved = (
        f"moved from version {choice.previous}"
        if choice.previous not in (None, choice.version)
        else "unchanged"
        if choice.previous == choice.version
        else "set"
    )
    print(f"  alias {ALIAS}: version {choice.version} ({moved}); load it with models:/{choice.name}@{ALIAS}")
    return 0


def _sample(args) -> int:
    """Print samples of a run's logged model; a bad option, run, filter or prompt exits 2 having loaded nothing."""
    from harness.models.sampling import SamplingError, check_settings
    from harness.tracking.logged_model import ModelFileError, RunSelectionError, load_run_model
    from harness.tracking.store import TrackingError, check_tracking_reachable, tracking_uri

    try:
        check_settings(
            1 if args.max_new_tokens is None else args.max_new_tokens, args.temperature, args.top_k, args.num_samples
        )
    except SamplingError as exc:
        print(f"error: {_option_names(str(exc))}", file=sys.stderr)
        return EXIT_BAD_INPUT
    uri = tracking_uri()
    try:
        check_tracking_reachable(uri)
        run_id = _sampled_run(uri, args.target, args.filters)
        loaded = load_run_model(uri, run_id)
        texts = loaded.sample(
            args.prompt,
            args.max_new_tokens,
            temperature=args.temperature,
            top_k=args.top_k,
            seed=args.seed,
            num_samples=args.num_samples,
        )
    except (SamplingError, RunSelectionError, ModelFileError, TrackingError) as exc:
        print(f"error: {_option_names(str(exc)) if isinstance(exc, SamplingError) else exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    meta = loaded.meta
    print(
        f"run {run_id} ({meta['variant']}): seed {meta['seed'] if args.seed is None else args.seed}, temperature "
        f"{args.temperature:g}, top-k {args.top_k or 'none'}",
        file=sys.stderr,
    )
    for i, text in enumerate(texts):
        if len(texts) > 1:
            print(f"--- sample {i + 1} of {len(texts)} ---")
        print(text)
    return 0


def _option_names(message: str) -> str:
    """A sampling error in the command line's words (--top-k, not top_k)."""
    for name in ("max_new_tokens", "temperature", "top_k", "num_samples"):
        message = message.replace(name, "--" + name.replace("_", "-"))
    return message


def _sampled_run(uri: str, target: str, filters: list[str]) -> str:
    """The run id ``harness sample`` means: ``target`` itself, or the one variant of the spec ``target`` that the
    filters pick (its latest FINISHED run); a RunSelectionError says what matched, nothing or several."""
    from harness.spec.parsing import load_spec
    from harness.spec.problems import SpecError
    from harness.tracking.logged_model import RunSelectionError, select_run

    if not Path(target).is_file():
        if filters:
            raise RunSelectionError(f"{target!r} is not a spec file, and a filter ({' '.join(filters)}) needs one")
        if target.endswith((".yaml", ".yml")):
            raise RunSelectionError(f"no spec file {target}")
        return target
    try:
        spec = load_spec(Path(target))
    except SpecError as exc:
        raise RunSelectionError("\n".join(exc.problems)) from None
    return select_run(uri, spec.name, filters)


def _stop_like_ctrl_c(signum, frame):
    raise KeyboardInterrupt


def _run(spec, variants, overrides: dict, args, data_dir) -> int:
    # Schedulers (Slurm, Kubernetes, systemd) stop jobs with SIGTERM: close the running variant KILLED as on Ctrl-C.
    signal.signal(signal.SIGTERM, _stop_like_ctrl_c)
    # A shell starts background jobs with SIGINT ignored, and Python then never raises KeyboardInterrupt;
    # a sweep must still stop cleanly on Ctrl-C / kill -INT, so take SIGINT back explicitly.
    signal.signal(signal.SIGINT, signal.default_int_handler)

    if args.jobs < 1:
        print("error: --jobs must be >= 1", file=sys.stderr)
        return EXIT_BAD_INPUT
    if spec.tune is not None:
        outcome = _tuned_sweeps(spec, variants, overrides, args, data_dir)
        if outcome is None:  # phase 1 was interrupted, lost its server or failed: nothing was decided
            from harness.tracking.store import OUTAGE, server_wait_s

            stopped = _TUNE_STATE["outcome"]
            if stopped.unreachable or (stopped.interrupted and OUTAGE.since is not None):
                return _tracking_lost(stopped, server_wait_s())
            return EXIT_INTERRUPTED if _TUNE_STATE.get("interrupted") else EXIT_FAILED_VARIANTS
    else:
        outcome = _sweep(spec, variants, overrides, args, data_dir)
    from harness.tracking.store import OUTAGE, server_wait_s

    if outcome.unreachable or (outcome.interrupted and OUTAGE.since is not None):
        return _tracking_lost(outcome, server_wait_s())
    delta = getattr(args, "delta", None)
    if getattr(args, "until_decided", False) and not outcome.interrupted and not outcome.failed:
        spec, outcome = _second_stage(spec, variants, overrides, args, data_dir, outcome)
    from harness.report.tables import report_directory

    folder = report_directory(args.results_dir, args.spec_as_written, overrides, spec.seeds or None)
    if outcome.interrupted and (folder / "runs.csv").exists():  # e.g. the committed reference report
        print(
            f"interrupted: {folder}/ keeps the report it had; `harness report {args.spec}` rewrites it from what "
            "MLflow holds",
            file=sys.stderr,
        )
    else:
        try:
            _report(args.spec_as_written, overrides, spec.seeds or None, args.results_dir, delta)
        except Exception as exc:  # the runs are safe in MLflow; a report problem must not hide that
            print(f"warning: could not write the report: {exc}", file=sys.stderr)
    for result in outcome.failed:
        print(f"{result.status} {result.variant_id}: {result.error}", file=sys.stderr)
    if outcome.interrupted:
        finished = [r.variant_id for r in outcome.results if r.status == "FINISHED"]
        print(
            f"interrupted: {len(finished)} variant(s) finished before Ctrl-C: {', '.join(finished) or 'none'}",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    return EXIT_FAILED_VARIANTS if outcome.failed else 0


_TUNE_STATE: dict = {}  # what the last tuning sweep of this process ended with


def _tune_line(spec, variants) -> str:
    """What tuning adds to the runs listed: phase 1's runs, and the untuned comparison's."""
    from harness.spec.expansion import setting_id

    tune = spec.tune
    settings = len({setting_id(v) for v in variants})
    points = math.prod(len(v) for v in tune.space.values()) if tune.search == "grid" else tune.trials
    how = (
        f"a grid, extended up to {tune.extend} step(s) beyond an end it chooses"
        if tune.search == "grid"
        else "TPE trials"
    )
    line = (
        f"tune ({', '.join(tune.keys)}): {settings} variant(s) x {points} point(s) x {len(tune.seeds)} tuning seed(s) "
        f"= {settings * points * len(tune.seeds)} tuning runs first ({how}); the runs above then train at each "
        "variant's choice"
    )
    if tune.compare_untuned:
        line += f", and again at the spec's own settings (compare_untuned: {len(variants)} more)"
    return line


def _tuned_adjust(spec):
    """For a spec with ``tune``: variants -> each at its chosen point (replayed from MLflow); else None."""
    if spec.tune is None:
        return None
    from harness.tracking.store import tracking_uri
    from harness.tuning import resolve

    def adjust(variants):
        return resolve(spec, variants, tracking_uri(), log=lambda line: None).decide

    return adjust


def _tuned_sweeps(spec, variants, overrides: dict, args, data_dir):
    """Phase 1 (tuning seeds, every point, extended at the edges), then phase 2 (the spec's seeds, each variant at
    its choice) and, with compare_untuned, the spec's own settings on the same seeds. Returns phase 2's outcome,
    or None when phase 1 stopped (Ctrl-C, or a run that failed for another reason than diverging)."""
    from harness.sweep import left_to_train
    from harness.tracking.store import tracking_uri
    from harness.tuning import resolve

    def train(tune_variants, label) -> bool:
        todo = tune_variants if args.force else left_to_train(spec, tune_variants)
        done = len(tune_variants) - len(todo)
        print(f"{label}: {len(tune_variants)} tuning runs (variant x point x tuning seed), {done} already FINISHED")
        if not todo:
            return True
        outcome = _sweep(spec, todo, overrides, args, data_dir, phase="tune", label=label, quiet=True)
        _TUNE_STATE["interrupted"] = outcome.interrupted
        _TUNE_STATE["outcome"] = outcome
        for result in outcome.failed:
            print(f"{result.status} {result.variant_id}: {result.error}", file=sys.stderr)
        return not outcome.interrupted and not outcome.failed and not outcome.unreachable

    tuned = resolve(spec, variants, tracking_uri(), train=train)
    if tuned.stopped:
        return None
    for setting, why in tuned.result.incomplete.items():
        print(f"tune: {setting}: {why}", file=sys.stderr)
    print(f"decide: {len(tuned.decide)} runs, each variant at its chosen point")
    outcome = _sweep(spec, tuned.decide, overrides, args, data_dir, phase="decide", label="decide")
    if tuned.untuned and not outcome.interrupted:
        print(f"untuned: {len(tuned.untuned)} runs at the spec's own settings (tune.compare_untuned)")
        untuned = _sweep(spec, tuned.untuned, overrides, args, data_dir, phase="untuned", label="untuned")
        outcome.interrupted = untuned.interrupted
        outcome.results += [r for r in untuned.results if r.status != "FINISHED"]
    return outcome


def _slurm_options(args):
    """--slurm-* as ``SlurmOptions``; None unless --executor slurm."""
    if args.executor != "slurm":
        return None
    from harness.executors.base import ExecutorError
    from harness.executors.slurm import SlurmOptions

    for flag in ("time", "cpus", "parallelism"):
        if getattr(args, f"slurm_{flag}") < 1:
            raise ExecutorError(f"--slurm-{flag} must be at least 1, got {getattr(args, f'slurm_{flag}')}")
    if args.slurm_gpus < 0 or args.slurm_signal_delay < 0:
        raise ExecutorError("--slurm-gpus and --slurm-signal-delay must be 0 or more")
    return SlurmOptions(
        partition=args.slurm_partition,
        time_min=args.slurm_time,
        gpus=args.slurm_gpus,
        cpus=args.slurm_cpus,
        parallelism=args.slurm_parallelism,
        signal_delay_s=args.slurm_signal_delay,
        folder=args.slurm_folder,
        shared_store=args.slurm_shared_store,
    )


def _tracking_lost(outcome, wait_s: float) -> int:
    """The sweep stopped with the tracking server silent: say so, and which variants it could not record."""
    unrecorded = outcome.unrecorded
    why = "interrupted while the tracking server was not answering" if outcome.interrupted else outcome.unreachable
    print(f"error: {why}", file=sys.stderr)
    print(
        f"could not record {len(unrecorded)} variant(s): {', '.join(unrecorded) or 'none'}. Their runs may stay "
        "RUNNING in the store; once the server is back, the same command skips what FINISHED and trains or resumes "
        "the rest (no report written now)",
        file=sys.stderr,
    )
    if outcome.unreachable:
        print(f"(a sweep waits up to {wait_s:.0f} s for the server: HARNESS_SERVER_WAIT_S)", file=sys.stderr)
    return EXIT_INTERRUPTED if outcome.interrupted else EXIT_TRACKING_LOST


def _sweep(spec, variants, overrides: dict, args, data_dir, phase=None, label="sweep", quiet=False):
    """One sweep of ``variants``, its one-line account printed (``quiet``: not its variants, one line each)."""
    from harness.sweep import run_sweep

    if not quiet:
        _print_variants(spec, variants)
    outcome = run_sweep(
        spec,
        variants,
        data_dir=data_dir,
        jobs=args.jobs,
        executor=args.executor,
        ray_address=args.ray_address,
        slurm=_slurm_options(args),
        force=args.force,
        overrides=overrides,
        command=args.command_line,
        checkpoint_dir=args.checkpoint_dir,
        checkpoint_store=args.checkpoint_store,
        show_progress=not args.no_progress,
        phase=phase,
        run_label=label,
    )
    finished = [r.variant_id for r in outcome.results if r.status == "FINISHED"]
    killed = [r for r in outcome.failed if r.status == "KILLED"]
    elsewhere = f", running elsewhere {len(outcome.elsewhere)}" if outcome.elsewhere else ""
    stopped = f", stopped {len(killed)}" if killed else ""
    print(
        f"finished {len(finished)}, skipped {len(outcome.skipped)}{elsewhere}{stopped}, "
        f"failed {len(outcome.failed) - len(killed)} (parent run {outcome.parent_run_id})"
    )
    return outcome


def _second_stage(spec, variants, overrides: dict, args, data_dir, pilot_outcome):
    """--until-decided: Stein's plan from the pilot's spreads, then the seeds it needs (finished ones skipped).
    Returns the spec with the seeds the report is of, and the outcome of the last sweep."""
    from harness.report.tables import pilot_plan, plan_lines
    from harness.spec.expansion import expand, with_seeds
    from harness.tracking.store import tracking_uri

    pilot = list(spec.seeds)
    adjust = _tuned_adjust(spec)
    found = pilot_plan(tracking_uri(), spec, overrides, pilot, args.delta, args.max_seeds or DEFAULT_MAX_SEEDS, adjust)
    for line in plan_lines(spec, found, args.max_seeds or DEFAULT_MAX_SEEDS):
        print(line)
    if len(found.seeds) <= len(pilot):
        return spec, pilot_outcome
    extended = with_seeds(spec, found.seeds)
    written = expand(extended, overrides, data_dir)
    if adjust is None:
        return extended, _sweep(extended, written, overrides, args, data_dir)
    outcome = _sweep(extended, adjust(written), overrides, args, data_dir, phase="decide", label="decide")
    if spec.tune.compare_untuned and not outcome.interrupted:
        untuned = _sweep(extended, written, overrides, args, data_dir, phase="untuned", label="untuned")
        outcome.interrupted = untuned.interrupted
    return extended, outcome


if __name__ == "__main__":
    sys.exit(main())
