"""A spec's variants: grid x named axes x zip groups, minus excludes, per seed, with overrides, each typed and
checked, with its identity.
"""

from __future__ import annotations

import itertools
import math
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from harness.data.corpora import CATALOG, FILE_DATASET, DataError, content_sha256, locate_catalog_file
from harness.spec.identity import RunConfig
from harness.spec.keys import (
    SECTIONS,
    SEED_KEY,
    check_dotted_key,
    config_field,
    default_of,
    is_identity,
    key_problem,
    type_value,
)
from harness.spec.problems import SpecError
from harness.spec.reading import load_yaml_text
from harness.spec.records import Problems, Spec, Variant


def with_seeds(spec: Spec, seeds: list[int] | None) -> Spec:
    """The spec with its ``seeds`` replaced (the CLI's ``--seeds``); None keeps the file's."""
    if seeds is None:
        return spec
    varied = (
        SEED_KEY in spec.grid
        or any(SEED_KEY in g for g in spec.zip_groups)
        or any(SEED_KEY in settings for levels in spec.levels.values() for settings in levels.values())
    )
    if varied:
        raise SpecError(f"{spec.path}: --seeds conflicts with the spec's own axis over {SEED_KEY}")
    if len(set(seeds)) != len(seeds):
        raise SpecError(f"--seeds: repeated seed in {seeds}")
    shared = sorted(set(seeds) & set(spec.tune.seeds)) if spec.tune else []
    if shared:
        raise SpecError(
            f"{spec.where('tune', 'seeds')}: --seeds {' '.join(map(str, shared))}: also tuning seeds (tune.seeds); "
            "the seeds that decide must be fresh ones"
        )
    return replace(spec, seeds=list(seeds))


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``['train.steps=200']`` -> ``{'train.steps': 200}``; values are YAML scalars, typed in ``expand``."""
    out = {}
    for item in items:
        if "=" not in item:
            raise SpecError(f"override {item!r}: expected key=value, e.g. train.steps=200")
        key, text = item.split("=", 1)
        check_dotted_key(key.strip(), f"override {item!r}")
        try:
            out[key.strip()] = load_yaml_text(text, f"override {key.strip()}") if text.strip() else ""
        except yaml.YAMLError as exc:
            raise SpecError(f"override {item!r}: value is not valid YAML ({exc})") from exc
    return out


def setting_id(variant: Variant) -> str:
    """A variant's id without its seed: what its seeds share (a point of grid/zip)."""
    return variant_id({k: v for k, v in variant.axes.items() if k != SEED_KEY})


def with_values(variant: Variant, values: dict[str, Any], seed: int | None = None, label: bool = False) -> Variant:
    """``variant`` with ``values`` set (dotted key -> typed value; a key for another model kind is left out)
    and, given one, another seed; its config checked again (a SpecError names what is wrong). ``label``: the
    values and the seed become axes of its id, as a tuning run's do; otherwise the id stays (a variant at its
    chosen point is still that variant)."""
    config = variant.config
    changes: dict[str, dict[str, Any]] = {}
    applied = {}
    for key, value in values.items():
        kinds = config_field(key).metadata.get("kinds")
        if kinds and config.model.kind not in kinds:
            continue
        section, name = key.split(".")
        changes.setdefault(section, {})[name] = value
        applied[key] = value
    if seed is not None:
        changes.setdefault("train", {})["seed"] = seed
    sections = {s: replace(getattr(config, s), **c) for s, c in changes.items()}
    found = [f"{section}.{name}: {why}" for section, obj in sections.items() for name, why in obj.problems()]
    if found:
        raise SpecError(f"variant {variant.id} with {_format_point(applied)}: {'; '.join(found)}")
    axes = dict(variant.axes)
    if label:
        axes = {k: v for k, v in axes.items() if k != SEED_KEY}
        axes.update(applied)
        if seed is not None:
            axes[SEED_KEY] = seed
    origins = {**variant.origins, **{k: "tune" for k in applied}}
    return Variant(variant_id(axes), axes, replace(config, **sections), None, origins)


def _format_point(values: dict[str, Any]) -> str:
    return ", ".join(f"{k}={_format_value(v)}" for k, v in values.items()) or "its own settings"


# --- expansion ----------------------------------------------------------------------------------------------


def _format_value(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "x".join(_format_value(v) for v in value)
    return str(value)


def _short_labels(keys: list[str]) -> dict[str, str]:
    """Axis labels for variant ids: the field name (a named axis: its name), or the dotted key where two share it."""
    names = [k.split(".")[-1] for k in keys]
    return {k: (k.split(".")[-1] if names.count(k.split(".")[-1]) == 1 else k) for k in keys}


def variant_id(axes: dict[str, Any]) -> str:
    labels = _short_labels(list(axes))
    return ",".join(f"{labels[k]}={_format_value(v)}" for k, v in axes.items()) or "base"


def expand(spec: Spec, overrides: dict[str, Any] | None = None, data_dir: Path | None = None) -> list[Variant]:
    """All variants of a spec: grid x named axes x zip groups x seeds, minus excludes, with overrides applied.

    Each variant's ``config.data_sha256`` is the sha256 of its data file, read here, so that
    ``variant.config.config_hash()`` needs nothing else; a catalog corpus is known by its catalog sha256
    (checked whenever the file is loaded). With a ``data_dir`` (``--data-dir``/``HARNESS_DATA_DIR``), each
    catalog corpus used is also checked there now, so a missing or wrong file is reported at the spec line
    that asks for it; without one nothing is downloaded here. A ``data.path`` is read as written (relative
    to the working folder).
    """
    variants, problems = _expand(spec, overrides or {}, data_dir)
    if problems:
        raise SpecError(problems)
    return variants


MAX_VARIANTS = 100_000  # default bound on grid x named axes x zip groups x seeds, counted before anything expands
MAX_VARIANTS_ENV = "HARNESS_MAX_VARIANTS"


def max_variants() -> int:
    """The bound on a spec's variants: ``HARNESS_MAX_VARIANTS``, else ``MAX_VARIANTS``.

    An environment variable rather than a flag: every command that expands the spec (validate, run, report,
    plan, the second stage of --until-decided) and every library call must agree on it, or ``report`` would
    refuse the sweep that ``run`` trained.
    """
    text = os.environ.get(MAX_VARIANTS_ENV, "").strip()
    if not text:
        return MAX_VARIANTS
    try:
        value = int(text.replace("_", "").replace(",", ""))
    except ValueError:
        value = 0
    if value < 1:
        raise SpecError(f"{MAX_VARIANTS_ENV}={text!r}: expected a whole number of variants >= 1, e.g. 200000")
    return value


def _check_variant_count(spec: Spec, sizes: list[tuple[str, tuple, int]]) -> None:
    """Refuse a spec whose axes multiply past ``max_variants()``, from the axes' sizes alone (nothing expanded)."""
    count = math.prod(size for _, _, size in sizes)
    limit = max_variants()
    if count <= limit:
        return
    section = sizes[0][1][0] if sizes else "grid"  # the section's own line: `grid:`, `zip:` or `seeds:`
    where = spec.marks.get((section, "<key>")) or spec.where(section)
    factors = " x ".join(f"{label} ({size:,})" for label, _, size in sizes)
    raise SpecError(
        f"{where}: {count:,} variants before exclude, past the limit of {limit:,}: {factors}; shrink an axis, "
        f"or set {MAX_VARIANTS_ENV}={count} to allow it"
    )


def _override_where(key: str, value: Any) -> str:
    return f"override {key}={_format_value(value)}"


def _expand(
    spec: Spec, overrides: dict[str, Any], data_dir: Path | None, known: set[str] = frozenset()
) -> tuple[list[Variant], list[str]]:
    problems = Problems(spec)
    problems.keys.update(known)
    typed_overrides: dict[str, Any] = {}
    for key, value in overrides.items():
        bad_key = key_problem(key)
        typed, bad = (value, bad_key) if bad_key else type_value(key, value)
        if bad:
            problems.add(_override_where(key, value), key, bad)
        else:
            typed_overrides[key] = typed

    sizes = [(key, ("grid", key), len(values)) for key, values in spec.grid.items() if key not in typed_overrides]
    for g, group in enumerate(spec.zip_groups):
        kept = [k for k in group if k not in typed_overrides]
        if kept:
            sizes.append((f"zip group {g} ({', '.join(kept)})", ("zip", g), len(group[kept[0]])))
    if spec.seeds and SEED_KEY not in typed_overrides:
        sizes.append(("seeds", ("seeds",), len(spec.seeds)))
    _check_variant_count(spec, sizes)

    # Each axis is a list of points: (axis value for the id, {dotted key: (typed value, where)}).
    axes: list[list[tuple[dict[str, Any], dict[str, tuple[Any, str]]]]] = []
    for key, values in spec.grid.items():
        if key in spec.levels:
            axes.append(
                [
                    ({key: level}, {k: (v, spec.where("grid", key, level, k)) for k, v in settings.items()})
                    for level, settings in spec.levels[key].items()
                ]
            )
        elif key not in typed_overrides:
            axes.append([({key: v}, {key: (v, spec.where("grid", key, i))}) for i, v in enumerate(values)])
    for g, group in enumerate(spec.zip_groups):
        kept = {k: v for k, v in group.items() if k not in typed_overrides}
        if kept:
            length = len(next(iter(kept.values())))
            axes.append(
                [
                    (
                        {k: vals[i] for k, vals in kept.items()},
                        {k: (vals[i], spec.where("zip", g, k, i)) for k, vals in kept.items()},
                    )
                    for i in range(length)
                ]
            )
    if spec.seeds and SEED_KEY not in typed_overrides:
        axes.append([({SEED_KEY: s}, {SEED_KEY: (s, spec.where("seeds", i))}) for i, s in enumerate(spec.seeds)])

    base = {k: (v, spec.where("base", *k.split("."))) for k, v in spec.base.items()}
    fixed = {k: (v, _override_where(k, overrides[k])) for k, v in typed_overrides.items()}
    fallback = spec.where("base") if ("base",) in spec.marks else f"{spec.path}:1:1"  # for defaults
    variants: list[Variant] = []
    clean: list[Variant] = []
    off_kind: dict[str, tuple[str, set]] = {}  # key set in base/overrides -> (where, kinds of variants)
    catalog_checked: dict[str, str | None] = {}  # dataset -> its problem in data_dir, if any
    for combo in itertools.product(*axes):
        point: dict[str, Any] = {}
        assignments = dict(base)
        for axis_values, settings in combo:
            point.update(axis_values)
            assignments.update(settings)
        assignments.update(fixed)
        if any(_excluded(entry, point, assignments) for entry in spec.exclude):
            continue
        before = len(problems.lines)
        vid = variant_id(point)
        config = _build_config(assignments, problems, fallback)
        kind = config.model.kind
        for key, (value, where) in assignments.items():
            kinds = config_field(key).metadata.get("kinds")
            if not kinds or value == default_of(key):
                continue
            if key in base or key in fixed:
                off_kind.setdefault(key, (where, set()))[1].add(kind)
            elif kind not in kinds:
                problems.add(
                    where,
                    key,
                    f"applies to model.kind {', '.join(kinds)} only, not {kind!r} "
                    f"(variant {vid}); set it in the levels of that kind, or exclude this combination",
                )
        if config.data.dataset == FILE_DATASET and config.data.path is not None:
            try:
                config = replace(config, data_sha256=content_sha256(config.data, data_dir))
            except (DataError, OSError) as exc:
                problems.add(
                    assignments.get("data.path", (None, fallback))[1], "data.path", str(exc).removeprefix("data.path: ")
                )
        elif config.data.dataset in CATALOG and data_dir is not None:
            if config.data.dataset not in catalog_checked:
                try:
                    locate_catalog_file(config.data.dataset, data_dir)
                    catalog_checked[config.data.dataset] = None
                except DataError as exc:
                    catalog_checked[config.data.dataset] = str(exc)
            if catalog_checked[config.data.dataset]:
                problems.add(
                    assignments.get("data.dataset", (None, fallback))[1],
                    "data.dataset",
                    catalog_checked[config.data.dataset],
                )
        variant = Variant(vid, point, config, None, {k: where for k, (_, where) in assignments.items()})
        if len(problems.lines) == before:
            variant = replace(variant, legacy_hash=config.legacy_hash())
            clean.append(variant)
        variants.append(variant)

    for key, (where, kinds_seen) in off_kind.items():
        kinds = config_field(key).metadata["kinds"]
        if not kinds_seen & set(kinds):
            problems.add(
                where,
                key,
                f"applies to model.kind {', '.join(kinds)} only, and no variant has that "
                f"kind (they have {', '.join(sorted(kinds_seen))})",
            )
    _check_duplicates(spec, clean, problems)
    if not variants and not problems.lines:
        problems.add(str(spec.path), "exclude", "every variant is excluded; nothing to run")
    return variants, [line for line, key in zip(problems.lines, problems.line_keys, strict=True) if key not in known]


def _excluded(entry: dict[str, Any], point: dict[str, Any], assignments: dict[str, tuple[Any, str]]) -> bool:
    """Typed comparison: ``train.lr: 1e-3`` excludes the variants whose learning rate is 0.001."""
    for key, wanted in entry.items():
        if key in point and "." not in key:
            actual = point[key]
        else:
            actual = assignments[key][0] if key in assignments else default_of(key)
        if actual != wanted:
            return False
    return True


def _build_config(assignments: dict[str, tuple[Any, str]], problems: Problems, fallback: str) -> RunConfig:
    """Typed config from ``dotted key -> (typed value, where)``; every semantic problem reported at its origin."""
    per_section: dict[str, dict[str, Any]] = {s: {} for s in SECTIONS}
    for key, (value, _) in assignments.items():
        section, name = key.split(".")
        per_section[section][name] = value
    sections = {s: SECTIONS[s](**per_section[s]) for s in SECTIONS}
    sections["data"] = sections["data"].resolved()
    for section, obj in sections.items():
        for name, problem in obj.problems():
            key = f"{section}.{name}"
            where = assignments.get(key, (None, None))[1]
            if where is None:
                # A default that is wrong for this variant: point at what made it wrong (the section's line).
                where = next((w for k, (_, w) in assignments.items() if k.startswith(f"{section}.")), fallback)
            problems.add(where, key, problem)
    return RunConfig(**sections)


def _check_duplicates(spec: Spec, variants: list[Variant], problems: Problems) -> None:
    """Two values of one axis that type to the same value, or two variants with one identity, would be one run."""
    found = False
    lists = [(("grid", k), k, v) for k, v in spec.grid.items() if k not in spec.levels]
    lists += [(("zip", g, k), k, v) for g, group in enumerate(spec.zip_groups) for k, v in group.items()]
    for path, key, values in lists:
        for i, value in enumerate(values):
            if value in values[:i]:
                first = values.index(value)
                problems.at(
                    path + (i,),
                    key,
                    f"duplicate value: {value!r} is item {first + 1} again once typed "
                    f"(for a number field 1 and 1.0 are one number); remove one",
                )
                found = True
    if found:
        return
    seen: dict[str, Variant] = {}
    reported: set[str] = set()
    for variant in variants:
        digest = variant.config.config_hash()
        first = seen.setdefault(digest, variant)
        if first is variant:
            continue
        differing = [k for k in variant.origins if variant.origins[k] != first.origins.get(k)]
        key = differing[0] if differing else next(iter(variant.axes), "")
        where = variant.origins.get(key, "defaults")
        if where in reported:
            continue
        reported.add(where)
        execution = [k for k in differing if not is_identity(k)]
        why = f"; they differ only in execution keys ({', '.join(execution)})" if execution == differing else ""
        problems.add(
            where,
            key,
            f"duplicate variant: {variant.id!r} is the same run as {first.id!r} "
            f"(identity {digest}{why}); remove the value or exclude the combination",
        )


# --- JSON Schema ------------------------------------------------------------------------------------------
