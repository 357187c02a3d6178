"""Tuning, the stage before the verdicts: every variant at its own best point, chosen on tuning seeds (phase 1),
then decided on the spec's own, fresh seeds (phase 2).

Phase 1 trains, for every variant (a point of grid/zip, seeds aside), every point of the spec's ``tune`` section
with every tuning seed; harness/report/tuning.py chooses from their results (its docstring has the rules: the
mean over seeds, diverged runs the worst, ties, the edge and its extension). ``search: tpe`` asks Optuna's seeded
TPESampler instead, ``trials`` points per variant. Phase 2 is an ordinary sweep of the spec's variants, each at its
chosen point: its runs' identities are their actual configs, so resume, ``--until-decided`` and the report work
as for any sweep. With ``compare_untuned`` the spec's variants as written train on the same seeds too.

MLflow is the record: nothing here keeps state of its own. A choice is a function of the tuning runs the store
holds, so ``harness report`` and ``harness plan`` replay it without training, and a rerun after Ctrl-C trains only
what is missing. A TPE study is restored the same way: the sampler is seeded, so asking it again with the same
recorded results suggests the same points, each found FINISHED in the store, until the first one that is not.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from mlflow.tracking import MlflowClient

from harness.metrics import mlflow_key
from harness.report import tuning as choice
from harness.report.tables import experiment_runs, runs_table
from harness.spec.expansion import setting_id, with_values
from harness.spec.keys import config_field
from harness.spec.problems import SpecError
from harness.spec.records import Range, Spec, Variant

INITIAL_KEY = {
    "final_val_loss": "val_loss",
    "final_val_bpc": "val_bpc",
    "final_train_loss": "train_loss",
    "final_train_bpc": "train_bpc",
}  # the curve whose step-0 point is the loss at initialisation
TPE_DIGITS = 3  # significant digits of a number TPE suggests: readable run names, and the same point twice is one run

# train(variants, label) trains what is not FINISHED and says whether the phase may go on (not interrupted, no
# failure); results(rows) reads the tuning runs of rows (setting, values, seed, variant) from the store.
Train = Callable[[list[Variant], str], bool]


@dataclass
class Tuned:
    """Phase 1's outcome: the result for the report, and phase 2's variants."""

    result: choice.TuningResult
    decide: list[Variant] = field(default_factory=list)  # the spec's variants at their chosen points
    untuned: list[Variant] = field(default_factory=list)  # compare_untuned: the spec's variants as written
    stopped: bool = False  # a phase-1 sweep was interrupted or failed: no phase 2

    @property
    def complete(self) -> bool:
        return not self.stopped and not self.result.incomplete


def _settings(variants: list[Variant]) -> dict[str, Variant]:
    """setting id -> one of its variants (its seed is replaced by each tuning seed)."""
    found: dict[str, Variant] = {}
    for variant in variants:
        found.setdefault(setting_id(variant), variant)
    return found


def _applies(key: str, variant: Variant) -> bool:
    kinds = config_field(key).metadata.get("kinds")
    return not kinds or variant.config.model.kind in kinds


class _Store:
    """The tuning runs' results as the store holds them (read again after every round)."""

    def __init__(self, uri: str, spec: Spec, metric: str):
        self.uri, self.spec, self.metric = uri, spec, metric

    def results(self, rows: list[tuple[str, dict, int, Variant]], keys: list[str]) -> pd.DataFrame:
        try:
            runs = experiment_runs(self.uri, self.spec)
        except Exception:  # no experiment yet: nothing recorded
            runs = pd.DataFrame()
        table = runs_table(runs, [row[3] for row in rows])
        diverged = set()
        if not runs.empty and "tags.diverged" in runs:
            diverged = set(runs.loc[runs["tags.diverged"] == "true", "run_id"])
        out = []
        for (setting, values, seed, variant), (_, run) in zip(rows, table.iterrows(), strict=True):
            out.append(
                {
                    "setting": setting,
                    **{k: values.get(k) for k in keys},
                    "seed": seed,
                    "value": run[self.metric],
                    "diverged": run["run_id"] in diverged,
                    "status": run["status"],
                    "run_id": run["run_id"],
                    "variant": variant.id,
                }
            )
        return pd.DataFrame(out)

    def initial(self, frame: pd.DataFrame) -> dict[str, float]:
        """setting -> the mean of its tuning runs' loss at step 0 (the loss at initialisation, ℓ0)."""
        client = MlflowClient(self.uri)
        key = mlflow_key(INITIAL_KEY[self.metric])
        found: dict[str, list[float]] = {}
        for _, row in frame.iterrows():
            if not isinstance(row["run_id"], str):
                continue
            points = [p.value for p in client.get_metric_history(row["run_id"], key) if p.step == 0]
            if points and math.isfinite(points[0]):
                found.setdefault(row["setting"], []).append(points[0])
        return {s: sum(v) / len(v) for s, v in found.items()}


def resolve(spec: Spec, variants: list[Variant], uri: str, train: Train | None = None, log=print) -> Tuned:
    """Phase 1: train (with ``train``) or replay (without: ``harness report`` and ``plan``) the tuning of every
    variant, and phase 2's variants from the choices."""
    tune = spec.tune
    store = _Store(uri, spec, tune.metric)
    settings = _settings(variants)
    keys = tune.keys
    steps = {s: v.config.train.steps for s, v in settings.items()}
    if tune.search == "tpe":
        points, rounds, stopped = _tpe(tune, settings, keys, store, train, log)
    else:
        points, rounds, stopped = _grid(tune, settings, keys, store, train, log)
    frame, points = points
    result = choice.TuningResult(
        keys,
        tune.metric,
        list(tune.seeds),
        tune.search,
        steps,
        points,
        choice.choices(points, keys),
        rounds=rounds,
        extend=tune.extend if tune.search == "grid" else 0,
        written=math.prod(len(v) for v in tune.space.values()) if tune.search == "grid" else tune.trials,
    )
    for setting in settings:
        if setting in result.choices:
            continue
        rows = points[points["setting"] == setting]
        missing = int((~rows["complete"]).sum()) if len(rows) else 0
        result.incomplete[setting] = f"no choice yet: {missing} point(s) without every tuning seed FINISHED"
    if len(frame):
        result.initial = store.initial(frame)
    decide, untuned = [], []
    for variant in variants:
        chosen = result.choices.get(setting_id(variant))
        if chosen is not None:
            decide.append(with_values(variant, {k: v for k, v in chosen.items() if v is not None}))
        if tune.compare_untuned:
            untuned.append(variant)
    return Tuned(result, decide, untuned, stopped)


def _grid(tune, settings, keys, store, train, log):
    """Every point of the lists, extended at an end the choice lands on, up to ``tune.extend`` rounds."""
    lists = {s: {k: list(tune.space[k]) for k in keys if _applies(k, v)} for s, v in settings.items()}
    stopped, rounds = False, 0
    frame = points = pd.DataFrame()
    for round_no in range(tune.extend + 1):
        rows = []
        for setting, variant in settings.items():
            own = lists[setting]
            for point in itertools.product(*own.values()):
                values = dict(zip(own, point, strict=True))
                rows += [(setting, values, seed, with_values(variant, values, seed, label=True)) for seed in tune.seeds]
        if train is not None and not train(
            [r[3] for r in rows], "tune" if round_no == 0 else f"tune extend {round_no}"
        ):
            stopped = True
        frame = store.results(rows, keys)
        points = choice.choose(choice.point_values(frame, keys), keys)
        if stopped or round_no == tune.extend:
            break
        grew = False
        for setting, edges in choice.edges_to_extend(points, keys).items():
            for key, side in edges:
                nxt = choice.extension(lists[setting][key], side)
                if nxt is None:
                    continue
                try:
                    with_values(settings[setting], {key: nxt})
                except SpecError as exc:  # e.g. a weight decay below 0: the list ends where the key does
                    log(f"tune: {setting}: no step beyond {key}={lists[setting][key]} ({exc})")
                    continue
                lists[setting][key].append(nxt)
                grew = True
                log(f"tune: {setting}: chose {key} at the {side} end; extending it to {nxt:g}")
        if not grew:
            break
        rounds = round_no + 1
    return (frame, points), rounds, stopped


def _distribution(key: str, space):
    import optuna

    if isinstance(space, Range):
        if isinstance(space.low, int) and isinstance(space.high, int):
            return optuna.distributions.IntDistribution(space.low, space.high, log=space.log)
        return optuna.distributions.FloatDistribution(float(space.low), float(space.high), log=space.log)
    return optuna.distributions.CategoricalDistribution(list(space))


def _tpe(tune, settings, keys, store, train, log):
    """``tune.trials`` rounds; in each, every variant's study asks one point, the points train together (all
    variants x tuning seeds in one sweep), and each study is told its point's mean (inf when a seed diverged)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    studies = {
        s: optuna.create_study(direction="minimize", sampler=optuna.samplers.TPESampler(seed=tune.seeds[0]))
        for s in settings
    }
    spaces = {s: {k: _distribution(k, tune.space[k]) for k in keys if _applies(k, v)} for s, v in settings.items()}
    frames, stopped, rounds = [], False, 0
    for trial_no in range(tune.trials):
        asked, rows = {}, []
        for setting, study in studies.items():
            trial = study.ask(spaces[setting])
            values = {k: _rounded(v) for k, v in trial.params.items()}
            asked[setting] = trial
            rows += [
                (setting, values, seed, with_values(settings[setting], values, seed, label=True)) for seed in tune.seeds
            ]
        if train is not None and not train([r[3] for r in rows], f"tune trial {trial_no + 1}"):
            stopped = True
        frame = store.results(rows, keys).assign(trial=trial_no + 1)
        frames.append(frame)
        values = choice.point_values(frame, ["trial", *keys])
        if not values["complete"].all():
            break  # replayed up to here: the next trials depend on this one's result
        for setting, trial in asked.items():
            studies[setting].tell(trial, float(values.loc[values["setting"] == setting, "mean"].iloc[0]))
        rounds = trial_no + 1
        if stopped:
            break
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    points = choice.point_values(frame, ["trial", *keys]) if len(frame) else pd.DataFrame()
    if len(points):
        points = choice.choose(points, ["trial", *keys])
        points["at_edge"] = ""  # TPE samples inside its ranges: no list to extend
    return (frame, points), rounds, stopped


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return float(f"{value:.{TPE_DIGITS}g}")
    return value
