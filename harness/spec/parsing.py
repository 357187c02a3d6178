"""``load_spec``: a spec file's sections checked and typed into a ``Spec``, every problem reported at once."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from harness.spec.expansion import _expand
from harness.spec.keys import (
    AXIS_NAME_PATTERN,
    PRACTICAL_DIFFERENCE,
    RANGE_KEYS,
    REFERENCE_KEYS,
    REFERENCE_METRICS,
    SECTIONS,
    SEED_KEY,
    TOP_LEVEL_KEYS,
    TUNE_EXTEND,
    TUNE_METRICS,
    TUNE_OPTIONS,
    TUNE_SEARCHES,
    TUNE_SECTIONS,
    _yaml11_float,
    is_identity,
    key_problem,
    type_value,
)
from harness.spec.names import name_problem, nfc_twins
from harness.spec.problems import SpecError, suggest
from harness.spec.reading import _read_yaml
from harness.spec.records import Problems, Range, Reference, Spec, Tune


def load_spec(path: str | Path) -> Spec:
    """Parse, type and check a spec, expanding it once as written, and report every problem at once."""
    path = Path(path)
    raw, marks = _read_yaml(path)
    if raw is None:
        raise SpecError(f"{path}: the file is empty; a spec needs at least 'name' and 'base'")
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: a spec must be a mapping of {', '.join(TOP_LEVEL_KEYS)}; got a {type(raw).__name__}")
    spec = Spec(path, "", "", {}, {}, [], [], [], marks=marks)
    problems = Problems(spec)

    for key in raw:
        if key not in TOP_LEVEL_KEYS:
            problems.key(
                (key,),
                str(key),
                f"unknown top-level key {key!r}; valid keys: {', '.join(TOP_LEVEL_KEYS)}{suggest(key, TOP_LEVEL_KEYS)}",
            )
    if "name" not in raw:
        problems.add(f"{path}:1:1", "name", "missing 'name' (the MLflow experiment name and the results/ folder)")
    elif not isinstance(raw["name"], str):
        problems.at(("name",), "name", f"expected a string, got {raw['name']!r} ({type(raw['name']).__name__})")
    elif name_problem(raw["name"]):
        problems.at(
            ("name",),
            "name",
            f"{name_problem(raw['name'])} (it names the MLflow experiment and a folder under results/)",
        )
    else:
        spec.name = raw["name"]
    description = raw.get("description")
    if description is not None and not isinstance(description, str):
        problems.at(("description",), "description", f"expected a string, got {description!r}")
    else:
        spec.description = description or ""

    spec.base = _parse_base(raw.get("base"), problems)
    _parse_grid(raw.get("grid"), spec, problems)
    _parse_zip(raw.get("zip"), spec, problems)
    _parse_seeds(raw.get("seeds"), spec, problems)
    _check_axis_conflicts(spec, problems)
    _parse_exclude(raw.get("exclude"), spec, problems)
    raw_references = raw.get("references")
    _parse_references(raw_references, spec, problems)
    _parse_practical_difference(raw, spec, problems)
    _parse_tune(raw.get("tune"), "tune" in raw, spec, problems)

    # The values of every variant, as written (keys already reported are not reported again), and the
    # variants that the references select.
    variants, found = _expand(spec, {}, None, known=problems.keys)
    problems.lines += found
    if not found:
        for i, reference in enumerate(spec.references):
            if variants and not any(reference.matches(v) for v in variants):
                problems.at(
                    ("references", i, "match"),
                    f"references[{i}].match",
                    f"{reference.match} selects no variant of the spec",
                )
    if problems.lines:
        raise SpecError(sorted(problems.lines, key=_line_order))
    return spec


def _line_order(line: str) -> tuple:
    """Problems in the order of the file: by line, then column (lines without a position last)."""
    found = re.match(r".*?:(\d+):(\d+): ", line)
    return (int(found[1]), int(found[2])) if found else (1 << 30, 0)


def _parse_base(raw: Any, problems: Problems) -> dict[str, Any]:
    base: dict[str, Any] = {}
    if raw is None:
        return base
    if not isinstance(raw, dict):
        problems.at(("base",), "base", f"expected a mapping of sections ({', '.join(SECTIONS)}), got {raw!r}")
        return base
    for section, values in raw.items():
        if section not in SECTIONS:
            problems.key(
                ("base", section),
                f"base.{section}",
                f"unknown section {section!r}; choices: {', '.join(SECTIONS)}{suggest(section, SECTIONS)}",
            )
            continue
        if values is None:
            continue
        if not isinstance(values, dict):
            problems.at(("base", section), f"base.{section}", f"expected a mapping of keys, got {values!r}")
            continue
        for name, value in values.items():
            dotted = f"{section}.{name}"
            bad_key = key_problem(dotted)
            if bad_key:
                problems.key(("base", section, name), dotted, bad_key)
                continue
            typed, bad_value = type_value(dotted, value)
            if bad_value:
                problems.at(("base", section, name), dotted, bad_value)
            else:
                base[dotted] = typed
    return base


def _typed_list(values: Any, key: str, path: tuple, problems: Problems) -> list | None:
    """A grid or zip list, each item typed; None (after reporting) when it is not a non-empty list."""
    if not isinstance(values, list) or not values:
        problems.at(path, key, f"an axis of {path[0]} must be a non-empty list of values, got {values!r}")
        return None
    before = len(problems.lines)
    out = []
    for i, value in enumerate(values):
        typed, bad = type_value(key, value)
        if bad:
            problems.at(path + (i,), key, bad)
        out.append(typed)
    # An axis with a value of the wrong type is left out: the variants are still expanded (their other
    # problems reported), and a config never holds a value its own checks cannot compare.
    return None if len(problems.lines) > before else out


def _parse_grid(raw: Any, spec: Spec, problems: Problems) -> None:
    if raw is None:
        return
    if not isinstance(raw, dict):
        problems.at(("grid",), "grid", f"expected a mapping of dotted key -> list of values, got {raw!r}")
        return
    for key, values in raw.items():
        if isinstance(key, str) and "." not in key and isinstance(values, dict):
            _parse_named_axis(key, values, spec, problems)
            continue
        bad_key = key_problem(key)
        if bad_key:
            problems.key(
                ("grid", key),
                str(key),
                bad_key + " (or a named axis: a name without a dot whose value is a mapping of level name -> settings)",
            )
            continue
        typed = _typed_list(values, key, ("grid", key), problems)
        if typed is not None:
            spec.grid[key] = typed


def _parse_named_axis(axis: str, raw_levels: dict, spec: Spec, problems: Problems) -> None:
    path = ("grid", axis)
    if not re.fullmatch(AXIS_NAME_PATTERN, axis):
        problems.key(path, axis, "a named axis is a word of letters, digits, _ and -")
    if not raw_levels:
        problems.at(path, axis, "a named axis needs at least one level (level name -> settings)")
        return
    levels: dict[str, dict[str, Any]] = {}
    twins = nfc_twins(raw_levels)
    for level, settings in raw_levels.items():
        where = path + (level,)
        if not isinstance(level, str):
            problems.key(where, axis, f"level name {level!r}: expected a name (text), got a {type(level).__name__}")
            continue
        if level in twins:
            problems.key(
                where,
                axis,
                f"level name {level!r} differs from level {twins[level]!r} only by Unicode normalisation "
                "(NFC); they would be one name in ids, run names and reports",
            )
            continue
        if name_problem(level):
            problems.key(where, axis, f"level name {name_problem(level)}")
            continue
        settings = {} if settings is None else settings  # an empty level: the base as it is
        if not isinstance(settings, dict):
            problems.at(where, f"{axis}.{level}", f"expected a mapping of dotted key -> value, got {settings!r}")
            continue
        levels[level] = {}
        for key, value in settings.items():
            bad_key = key_problem(key)
            if bad_key:
                problems.key(where + (key,), str(key), bad_key)
                continue
            typed, bad = type_value(key, value)
            if bad:
                problems.at(where + (key,), key, bad)
                continue
            levels[level][key] = typed
    spec.levels[axis] = levels
    spec.grid[axis] = list(levels)


def _parse_zip(raw: Any, spec: Spec, problems: Problems) -> None:
    if raw is None:
        return
    groups = [raw] if isinstance(raw, dict) else raw
    if not isinstance(groups, list):
        problems.at(("zip",), "zip", f"expected a list of groups (mappings of dotted key -> list), got {raw!r}")
        return
    for i, group in enumerate(groups):
        path = ("zip",) if isinstance(raw, dict) else ("zip", i)
        if not isinstance(group, dict) or not group:
            problems.at(path, f"zip[{i}]", f"expected a mapping of dotted key -> list, got {group!r}")
            continue
        typed_group = {}
        for key, values in group.items():
            bad_key = key_problem(key)
            if bad_key:
                problems.key(path + (key,), str(key), bad_key)
                continue
            typed = _typed_list(values, key, path + (key,), problems)
            if typed is not None:
                typed_group[key] = typed
        lengths = {len(v) for v in typed_group.values()}
        if len(lengths) > 1:
            problems.at(path, f"zip[{i}]", f"lists must have the same length, got lengths {sorted(lengths)}")
            continue
        spec.zip_groups.append(typed_group)


def _parse_seeds(raw: Any, spec: Spec, problems: Problems) -> None:
    if raw is None:
        return
    if not isinstance(raw, list):
        problems.at(("seeds",), "seeds", f"expected a list of integers, got {raw!r}")
        return
    for i, seed in enumerate(raw):
        if not isinstance(seed, int) or isinstance(seed, bool):
            problems.at(("seeds", i), "seeds", f"expected integers, got {seed!r}")
        elif seed in spec.seeds:
            problems.at(("seeds", i), "seeds", f"seed {seed} is repeated")
        else:
            spec.seeds.append(seed)


def _check_axis_conflicts(spec: Spec, problems: Problems) -> None:
    """Each dotted key is varied in one place: a grid axis, one zip group, one named axis, or seeds."""
    owner: dict[str, str] = {}

    def claim(key: str, by: str, path: tuple) -> None:
        if key in owner and owner[key] != by:
            problems.key(path, key, f"is varied by {owner[key]} and by {by}; put it in one place")
        owner.setdefault(key, by)

    for key in spec.grid:
        if key not in spec.levels:
            claim(key, "grid", ("grid", key))
    for axis, levels in spec.levels.items():
        for level, settings in levels.items():
            for key in settings:
                claim(key, f"named axis {axis!r}", ("grid", axis, level, key))
    for i, group in enumerate(spec.zip_groups):
        for key in group:
            claim(key, f"zip group {i}", ("zip", i, key))
    if spec.seeds:
        claim(SEED_KEY, "seeds", ("seeds",))


def _parse_exclude(raw: Any, spec: Spec, problems: Problems) -> None:
    if raw is None:
        return
    if not isinstance(raw, list):
        problems.at(("exclude",), "exclude", f"expected a list of partial assignments, got {raw!r}")
        return
    axes = [k for k in spec.axis_keys]
    for i, entry in enumerate(raw):
        path = ("exclude", i)
        if not isinstance(entry, dict) or not entry:
            problems.at(path, f"exclude[{i}]", f"expected a mapping of axis -> value, got {entry!r}")
            continue
        typed_entry = {}
        for key, value in entry.items():
            if key not in axes:
                problems.key(
                    path + (key,),
                    str(key),
                    f"{key} is not an axis of grid, zip or seeds; axes: "
                    f"{', '.join(map(str, axes)) or 'none'}{suggest(key, axes)}",
                )
                continue
            if key in spec.levels:
                if value not in spec.levels[key]:
                    problems.at(
                        path + (key,),
                        key,
                        f"unknown level {value!r}; levels: "
                        f"{', '.join(spec.levels[key])}{suggest(value, spec.levels[key])}",
                    )
                    continue
                typed_entry[key] = value
                continue
            typed, bad = type_value(key, value)
            if bad:
                problems.at(path + (key,), key, bad)
                continue
            typed_entry[key] = typed
        spec.exclude.append(typed_entry)


def _parse_references(raw: Any, spec: Spec, problems: Problems) -> None:
    if raw is None:
        return
    if not isinstance(raw, list):
        problems.at(("references",), "references", "expected a list of {match, metric, value, source}")
        return
    for i, entry in enumerate(raw):
        path, name = ("references", i), f"references[{i}]"
        if not isinstance(entry, dict):
            problems.at(path, name, f"expected a mapping with {', '.join(REFERENCE_KEYS)}, got {entry!r}")
            continue
        ok = True
        for key in entry:
            if key not in REFERENCE_KEYS:
                problems.key(
                    path + (key,),
                    f"{name}.{key}",
                    f"unknown key {key!r}; valid keys: {', '.join(REFERENCE_KEYS)}{suggest(key, REFERENCE_KEYS)}",
                )
                ok = False
        for key in REFERENCE_KEYS:
            if key not in entry:
                problems.at(path, name, f"missing {key!r}")
                ok = False
        metric, value, source = entry.get("metric"), entry.get("value"), entry.get("source")
        if "metric" in entry and metric not in REFERENCE_METRICS:
            problems.at(
                path + ("metric",),
                f"{name}.metric",
                f"unknown metric {metric!r}; choices: "
                f"{', '.join(REFERENCE_METRICS)}{suggest(metric, REFERENCE_METRICS)}",
            )
            ok = False
        value = _yaml11_float(value)
        if "value" in entry and (isinstance(value, bool) or not isinstance(value, (int, float))):
            problems.at(path + ("value",), f"{name}.value", f"expected a number, got {value!r}")
            ok = False
        elif "value" in entry and not math.isfinite(value):
            problems.at(path + ("value",), f"{name}.value", f"expected a finite number, got {value!r}")
            ok = False
        if "source" in entry and (not isinstance(source, str) or not source.strip()):
            problems.at(path + ("source",), f"{name}.source", "expected a text saying where the number comes from")
            ok = False
        match = _parse_match(entry.get("match"), spec, path + ("match",), f"{name}.match", problems)
        if ok and match is not None:
            spec.references.append(Reference(match, metric, float(value), source))


def _parse_practical_difference(raw: dict, spec: Spec, problems: Problems) -> None:
    """δ of the report's verdicts: a number of nats > 0 (a report setting: no run's identity depends on it)."""
    if "practical_difference" not in raw:
        return
    value = _yaml11_float(raw["practical_difference"])
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        problems.at(
            ("practical_difference",),
            "practical_difference",
            f"expected a number of nats > 0 (the smallest difference in loss that matters; default "
            f"{PRACTICAL_DIFFERENCE}), got {raw['practical_difference']!r}",
        )
        return
    spec.practical_difference = float(value)


def _parse_match(raw: Any, spec: Spec, path: tuple, name: str, problems: Problems) -> dict | None:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        problems.at(path, name, f"expected a mapping of axis or dotted key -> value, got {raw!r}")
        return None
    match = {}
    for key, value in raw.items():
        if isinstance(key, str) and "." not in key:
            if key not in spec.levels:
                named = list(spec.levels)
                problems.key(
                    path + (key,),
                    key,
                    f"is not a named axis; named axes: {', '.join(named) or 'none'}"
                    f"{suggest(key, named)} (or use a dotted key like data.dataset)",
                )
            elif value not in spec.levels[key]:
                problems.at(
                    path + (key,),
                    key,
                    f"unknown level {value!r}; levels: {', '.join(spec.levels[key])}{suggest(value, spec.levels[key])}",
                )
            else:
                match[key] = value
            continue
        bad_key = key_problem(key)
        if bad_key:
            problems.key(path + (key,), str(key), bad_key)
            continue
        typed, bad = type_value(key, value)
        if bad:
            problems.at(path + (key,), key, bad)
            continue
        match[key] = typed
    return match if len(match) == len(raw) else None


def _parse_tune(raw: Any, present: bool, spec: Spec, problems: Problems) -> None:
    """The ``tune`` section: dotted train.*/model.* keys with their values (a list; a range for TPE) and the
    options in ``TUNE_OPTIONS``. Every problem is reported at its line; nothing trains with a bad one."""
    if not present:
        return
    if not isinstance(raw, dict) or not raw:
        problems.at(
            ("tune",),
            "tune",
            "expected a mapping of dotted train.*/model.* keys -> list of values, and the options "
            f"{', '.join(TUNE_OPTIONS)}; got {raw!r}",
        )
        return
    search = raw.get("search", "grid")
    if search not in TUNE_SEARCHES:
        problems.at(
            ("tune", "search"),
            "tune.search",
            f"unknown search {search!r}; choices: {', '.join(TUNE_SEARCHES)}{suggest(search, TUNE_SEARCHES)}",
        )
        search = None
    varied = {k for k in spec.grid if k not in spec.levels} | {k for g in spec.zip_groups for k in g}
    space: dict[str, list | Range] = {}
    for key, values in raw.items():
        if key in TUNE_OPTIONS:
            continue
        path, name = ("tune", key), f"tune.{key}"
        bad_key = key_problem(key)
        if bad_key:
            problems.key(
                path,
                str(key),
                f"{bad_key}; or one of the options {', '.join(TUNE_OPTIONS)}{suggest(key, TUNE_OPTIONS)}",
            )
            continue
        if key.split(".")[0] not in TUNE_SECTIONS or key == SEED_KEY or not is_identity(key):
            why = (
                "the seed is what tuning averages over (tune.seeds)"
                if key == SEED_KEY
                else "it changes no run's math (an execution key)"
                if not is_identity(key)
                else f"only {' and '.join(s + '.*' for s in TUNE_SECTIONS)} keys are tuned"
            )
            problems.key(path, name, f"{key} cannot be tuned: {why}")
            continue
        if key in varied:
            problems.key(path, name, f"{key} is also a grid or zip axis; an axis is compared, not tuned: keep one")
            continue
        if isinstance(values, dict) and search == "tpe":
            found = _parse_range(key, values, path, problems)
            if found is not None:
                space[key] = found
            continue
        if not isinstance(values, list) or not values:
            expected = "a non-empty list of values" + (" or a range {low, high, log}" if search == "tpe" else "")
            problems.at(path, name, f"expected {expected}, got {values!r}")
            continue
        typed_values, ok = [], True
        for i, value in enumerate(values):
            typed, bad = type_value(key, value)
            if not bad and isinstance(typed, float) and not math.isfinite(typed):
                bad = f"expected a finite number, got {value!r}"
            if bad:
                problems.at(path + (i,), name, bad)
                ok = False
            elif typed in typed_values:
                problems.at(path + (i,), name, f"duplicate value {value!r} (item {typed_values.index(typed) + 1})")
                ok = False
            typed_values.append(typed)
        if ok:
            space[key] = typed_values
    keys = [k for k in raw if k not in TUNE_OPTIONS]
    if not keys:
        problems.key(("tune",), "tune", "tunes nothing: give at least one dotted train.*/model.* key with its values")

    seeds = raw.get("seeds")
    tune_seeds: list[int] = []
    if seeds is None:
        problems.key(("tune",), "tune.seeds", "missing: the tuning seeds, disjoint from the spec's `seeds`")
    elif not isinstance(seeds, list) or not seeds:
        problems.at(("tune", "seeds"), "tune.seeds", f"expected a non-empty list of integers, got {seeds!r}")
    else:
        for i, seed in enumerate(seeds):
            if not isinstance(seed, int) or isinstance(seed, bool):
                problems.at(("tune", "seeds", i), "tune.seeds", f"expected integers, got {seed!r}")
            elif seed in tune_seeds:
                problems.at(("tune", "seeds", i), "tune.seeds", f"seed {seed} is repeated")
            elif seed in spec.seeds:
                problems.at(
                    ("tune", "seeds", i),
                    "tune.seeds",
                    f"seed {seed} is also one of the spec's `seeds`: tuning seeds choose, the spec's seeds decide, "
                    "and a seed used for both would let the choice bias the verdict",
                )
            else:
                tune_seeds.append(seed)
    if not spec.seeds:
        problems.key(
            ("tune",),
            "seeds",
            "a spec with `tune` needs its own `seeds` (fresh seeds that decide, disjoint from tune.seeds)",
        )

    metric = raw.get("metric", "final_val_loss")
    if metric not in TUNE_METRICS:
        problems.at(
            ("tune", "metric"),
            "tune.metric",
            f"unknown metric {metric!r}; choices (lower is better): {', '.join(TUNE_METRICS)}"
            f"{suggest(metric, TUNE_METRICS)}",
        )
    extend = raw.get("extend", TUNE_EXTEND)
    if not isinstance(extend, int) or isinstance(extend, bool) or not 0 <= extend <= 10:
        problems.at(
            ("tune", "extend"),
            "tune.extend",
            f"expected a whole number from 0 to 10 (steps beyond an end of a list), got {extend!r}",
        )
    trials = raw.get("trials")
    if search == "tpe":
        if trials is None:
            problems.key(("tune",), "tune.trials", "search: tpe needs `trials` (trials per variant, e.g. 8)")
        elif not isinstance(trials, int) or isinstance(trials, bool) or not 1 <= trials <= 1000:
            problems.at(("tune", "trials"), "tune.trials", f"expected a whole number from 1 to 1000, got {trials!r}")
        if "extend" in raw:
            problems.key(("tune", "extend"), "tune.extend", "goes with search: grid (TPE samples inside its ranges)")
    elif trials is not None and search == "grid":
        problems.key(("tune", "trials"), "tune.trials", "goes with search: tpe (a grid tries every point)")
    compare = raw.get("compare_untuned", False)
    if not isinstance(compare, bool):
        problems.at(("tune", "compare_untuned"), "tune.compare_untuned", f"expected true/false, got {compare!r}")
    if problems.lines:
        return
    spec.tune = Tune(space, tune_seeds, metric, extend, search, trials, compare)


def _parse_range(key: str, raw: dict, path: tuple, problems: Problems) -> Range | None:
    """A TPE range ``{low, high, log}`` of a number key: finite, low < high, low > 0 on a log scale."""
    name = f"tune.{key}"
    ok = True
    for k in raw:
        if k not in RANGE_KEYS:
            problems.key(path + (k,), f"{name}.{k}", f"unknown key {k!r}; a range has {', '.join(RANGE_KEYS)}")
            ok = False
    bounds = {}
    for k in ("low", "high"):
        if k not in raw:
            problems.at(path, name, f"a range needs {k!r}")
            ok = False
            continue
        typed, bad = type_value(key, raw[k])
        if not bad and (isinstance(typed, bool) or not isinstance(typed, (int, float))):
            bad = f"a range is of numbers; {key} takes {typed!r}"
        if not bad and not math.isfinite(typed):
            bad = f"expected a finite number, got {raw[k]!r}"
        if bad:
            problems.at(path + (k,), f"{name}.{k}", bad)
            ok = False
        bounds[k] = typed
    log = raw.get("log", False)
    if not isinstance(log, bool):
        problems.at(path + ("log",), f"{name}.log", f"expected true/false, got {log!r}")
        ok = False
    if not ok:
        return None
    if bounds["low"] >= bounds["high"]:
        problems.at(path + ("low",), f"{name}.low", f"low {bounds['low']!r} must be below high {bounds['high']!r}")
        return None
    if log and bounds["low"] <= 0:
        problems.at(path + ("low",), f"{name}.low", f"a log range needs low > 0, got {bounds['low']!r}")
        return None
    return Range(bounds["low"], bounds["high"], log)
