"""What a loaded spec is: ``Spec`` (its axes, seeds and references) and the ``Variant``s it expands to."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.spec.identity import RunConfig
from harness.spec.keys import PRACTICAL_DIFFERENCE, SEED_KEY


@dataclass(frozen=True)
class Variant:
    """One point of the grid: an id for humans, its axis values (level names for named axes), the config.

    ``legacy_hash`` is the identity-version-1 hash of the same config, for matching runs recorded before
    version 2 (None when none can match). ``origins`` says where in the spec each set key came from.
    """

    id: str
    axes: dict[str, Any]
    config: RunConfig
    legacy_hash: str | None = None
    origins: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    def where(self, key: str) -> str:
        """``file:line:column`` (or ``override k=v``, or ``defaults``) of a dotted key of this variant."""
        return self.origins.get(key, "defaults")


@dataclass(frozen=True)
class Reference:
    """A published number: the variants it is about (``match``), a runs.csv metric, its value and source."""

    match: dict[str, Any]
    metric: str
    value: float
    source: str

    def matches(self, variant: Variant) -> bool:
        for key, wanted in self.match.items():
            if "." not in key:
                if variant.axes.get(key) != wanted:
                    return False
            else:
                section, name = key.split(".")
                config = variant.config.data.resolved() if section == "data" else getattr(variant.config, section)
                if getattr(config, name) != wanted:
                    return False
        return True


# --- the tune section ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Range:
    """A range TPE samples a number from: ``{low, high, log}`` (log: sampled on a log scale)."""

    low: float
    high: float
    log: bool = False


@dataclass(frozen=True)
class Tune:
    """The spec's ``tune`` section: what every variant tries before it is decided (harness/tuning.py).

    ``space``: dotted key -> a list of values (grid search; their product is tried) or a ``Range`` (TPE).
    The choice minimises ``metric``'s mean over ``seeds``, which are disjoint from the spec's own seeds."""

    space: dict[str, list | Range]
    seeds: list[int]
    metric: str = "final_val_loss"
    extend: int = 2  # grid: steps beyond an end of a numeric list when the choice lands on it
    search: str = "grid"  # grid | tpe
    trials: int | None = None  # tpe: trials per variant
    compare_untuned: bool = False  # also train the spec's seeds at its own settings, for verdicts side by side

    @property
    def keys(self) -> list[str]:
        return list(self.space)


# --- the spec -----------------------------------------------------------------------------------------------


@dataclass
class Spec:
    """A parsed, typed spec. ``grid`` keeps the written order; a named axis maps to its level names there,
    and its settings are in ``levels[axis][level]`` (dotted key -> typed value)."""

    path: Path
    name: str
    description: str
    base: dict[str, Any]  # dotted key -> typed value
    grid: dict[str, list]
    zip_groups: list[dict[str, list]]
    exclude: list[dict[str, Any]]
    seeds: list[int]
    levels: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    references: list[Reference] = field(default_factory=list)
    practical_difference: float = PRACTICAL_DIFFERENCE  # δ (nats) of the report's verdicts; no run's identity
    tune: Tune | None = None  # each variant at its own best point, chosen on tuning seeds (harness/tuning.py)
    marks: dict[tuple, str] = field(default_factory=dict, repr=False, compare=False)

    @property
    def named_axes(self) -> dict[str, list[str]]:
        return {axis: list(levels) for axis, levels in self.levels.items()}

    @property
    def axis_keys(self) -> list[str]:
        keys = list(self.grid)
        for group in self.zip_groups:
            keys += list(group)
        if self.seeds:
            keys.append(SEED_KEY)
        return keys

    def where(self, *path) -> str:
        """``file:line:column`` of a node (the nearest one written), for messages."""
        for end in range(len(path), 0, -1):
            if path[:end] in self.marks:
                return self.marks[path[:end]]
        return f"{self.path}"


class Problems:
    """Collects ``where: key: message`` lines instead of stopping at the first."""

    def __init__(self, spec: Spec):
        self.spec = spec
        self.lines: list[str] = []
        self.keys: set[str] = set()  # keys with a problem already: a later check on them would only echo it
        self.line_keys: list[str] = []

    def at(self, path: tuple, key: str, message: str) -> None:
        self.add(self.spec.where(*path), key, message)

    def key(self, path: tuple, key: str, message: str) -> None:
        """A problem with a mapping key itself: located at the key, not its value."""
        self.add(
            self.spec.where(*path, "<key>") if path + ("<key>",) in self.spec.marks else self.spec.where(*path),
            key,
            message,
        )

    def add(self, where: str, key: str, message: str) -> None:
        self.keys.add(key)
        self.line_keys.append(key)
        self.lines.append(f"{where}: {key}: {message}" if key else f"{where}: {message}")
