"""Verdicts on a report's effects: better, worse, equivalent within ±δ, or undecided, with the family-wise error
rate held at alpha over the report, and the number of seeds a two-stage (Stein) design needs to decide them.

An effect is the paired differences d = level - baseline of a loss (nats; lower d = the level is better), given
as (n, mean, std): the ``n_pairs``, ``mean_difference`` and ``std`` columns of effects.csv. δ is the spec's
``practical_difference``. Pure numpy/scipy.special/pandas, so it is tested on hand-made numbers.
"""

import math
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from scipy.special import ndtri, stdtr, stdtrit  # what scipy.stats.t and .norm call, without its ~1.5 s import

METHODS = ("holm", "bonferroni", "none")  # "none": unadjusted, to show what the adjustment changed
METHOD = (
    "Each effect (paired differences d = level - baseline over seeds) is tested for a difference (two-sided t-test of "
    "mean 0) and for equivalence within ±δ nats (TOST, the larger of two one-sided t-test p-values against -δ and +δ; "
    "Schuirmann 1987, J. Pharmacokinet. Biopharm. 15:657-680). The family is both hypotheses of every testable "
    "treatment effect in the report (2 pairs or more; a corpus against a corpus is a measurement, not a treatment), "
    "2m for m effects; Holm's step-down (Holm 1979, Scand. J. Statist. 6:65-70) holds the chance of any false "
    "verdict in it at alpha. Better or worse: adjusted difference p < alpha; else equivalent: adjusted TOST p < alpha; "
    "else undecided. Shown beside it: the unadjusted 1 - alpha interval and Bonferroni's at 1 - alpha/2m. Seeds are "
    "planned, never added until p < alpha (optional stopping inflates false positives): the spec's seeds are a "
    "pilot whose spread s0 sets the total N = max(n0, ceil((t(n0 - 1) * s0 / (δ/2))^2)) by Stein's two-stage procedure "
    "(Stein 1945, Ann. Math. Statist. 16:243-258); the final interval, mean of all N ± t(n0 - 1) * s0 / sqrt(N), is "
    "at most δ/2 wide each side, so it decides, and it covers with probability 1 - alpha/2m whatever the spread. N is "
    "planned from the pilot's spreads alone, and the verdicts are drawn once, from all N seeds (the pilot's are "
    "provisional)."
)

Row = tuple[int, float, float, int]  # n, mean, std, degrees of freedom of std (n - 1, or n0 - 1 for a Stein row)
VERDICTS = ("better", "worse", "equivalent", "undecided")
# Plans a person can follow. Below a pilot of MIN_PILOT_SEEDS seeds per variant no plan is made: the pilot's sd
# has too few degrees of freedom (t(1) at alpha/2m is in the hundreds, so a 2-seed pilot asks for thousands of
# seeds whatever the truth). A need beyond PRACTICAL_MAX_SEEDS seeds per variant is said in words (the difference
# against the noise), never as a number to train, and leaves the rest of the plan alone.
MIN_PILOT_SEEDS = 3
PRACTICAL_MAX_SEEDS = 1000


@dataclass(frozen=True)
class Decision:
    """One effect's verdict; the intervals are t-intervals of the mean difference (nats)."""

    verdict: str  # one of VERDICTS
    n: int
    mean: float
    std: float  # a Stein row's is the pilot's sd
    ci_low: float  # unadjusted, two-sided 1 - alpha
    ci_high: float
    adj_ci_low: float  # Bonferroni, two-sided 1 - alpha / family size
    adj_ci_high: float
    p_difference: float  # two-sided t-test of mean 0
    p_equivalence: float  # TOST: the larger one-sided p against -δ and +δ
    adj_p_difference: float
    adj_p_equivalence: float
    seeds_needed: int | None  # Stein's total for an undecided effect; None when decided or without a spread
    reason: str


@dataclass(frozen=True)
class Family:
    """The decisions of one report and the family they were adjusted over: ``size`` = 2 hypotheses per effect."""

    decisions: tuple[Decision, ...]
    method: str
    alpha: float
    delta: float
    effects: int

    @property
    def size(self) -> int:
        return 2 * self.effects

    @property
    def divisor(self) -> int:
        return _divisor(self.method, self.effects)

    def describe(self) -> str:
        name = {"holm": "Holm's step-down", "bonferroni": "Bonferroni", "none": "no adjustment (unadjusted)"}
        return (
            f"{name[self.method]} over a family of {self.size} hypotheses (a difference and an equivalence within "
            f"±{self.delta:g} nats for each of {self.effects} effects), alpha = {self.alpha:g}; adjusted intervals "
            f"at {1 - self.alpha / self.divisor:.4g}, unadjusted at {1 - self.alpha:.4g}."
        )

    def frame(self) -> pd.DataFrame:
        table = pd.DataFrame([asdict(d) for d in self.decisions], columns=list(Decision.__dataclass_fields__))
        return table.astype({"seeds_needed": "Int64"})


def _divisor(method: str, effects: int) -> int:
    """What alpha is divided by for the adjusted intervals and the seed plan: the family size (1 unadjusted)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    return 1 if method == "none" else max(2 * effects, 1)


def _check(delta, alpha: float) -> tuple[float, float]:
    """δ as a float, or a ValueError naming the spec's field; alpha in (0, 1)."""
    try:
        value = math.nan if isinstance(delta, (bool, str, bytes)) else float(delta)
    except (TypeError, ValueError):
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"practical_difference must be a positive number of nats, got {delta!r}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie between 0 and 1, got {alpha!r}")
    return value, float(alpha)


def _t(a: float, df: int) -> float:  # t_{1 - a/2, df}: the quantile of a two-sided level-a interval
    return float(stdtrit(df, 1 - a / 2))


def _testable(row: Row) -> bool:
    n, mean, std, df = row
    return n >= 2 and df >= 1 and math.isfinite(mean) and math.isfinite(std)


def _ratio(x: float, se: float) -> float:  # x / se; a zero spread (all differences equal) is a sure sign, 0/0 is 0
    return x / se if se > 0 else math.copysign(math.inf, x) if x != 0 else 0.0


def _interval(row: Row, a: float) -> tuple[float, float]:
    n, mean, std, df = row
    if not _testable(row):
        return math.nan, math.nan
    half = _t(a, df) * std / math.sqrt(n)
    return mean - half, mean + half


def _p_values(row: Row, delta: float) -> tuple[float, float]:
    """(two-sided p of mean 0, TOST p of |mean| >= δ); NaN without a spread."""
    n, mean, std, df = row
    if not _testable(row):
        return math.nan, math.nan
    se = std / math.sqrt(n)
    p_difference = 2 * stdtr(df, -abs(_ratio(mean, se)))  # the t distribution's upper tail: sf(x) = cdf(-x)
    p_equivalence = max(stdtr(df, -_ratio(mean + delta, se)), stdtr(df, _ratio(mean - delta, se)))
    return min(1.0, float(p_difference)), float(p_equivalence)


def _rows(rows) -> list[Row]:
    """(n, mean, std[, df]) tuples, or a DataFrame with n_pairs, mean_difference, std (and optionally df)."""
    if isinstance(rows, pd.DataFrame):
        df = rows["df"] if "df" in rows else rows["n_pairs"] - 1
        rows = zip(rows["n_pairs"], rows["mean_difference"], rows["std"], df, strict=True)
    return [(int(r[0]), float(r[1]), float(r[2]), int(r[3]) if len(r) > 3 else int(r[0]) - 1) for r in rows]


def adjust(p, method: str = "holm") -> np.ndarray:
    """Adjusted p-values of one family (NaN, an untestable hypothesis, counts as p = 1). Holm (1979): sort
    ascending, multiply the i-th smallest by (N - i + 1), carry the running maximum, cap at 1."""
    _divisor(method, 0)
    p = np.nan_to_num(np.asarray(p, dtype=float), nan=1.0)
    if method == "none":
        return p
    if method == "bonferroni":
        return np.minimum(1.0, len(p) * p)
    order = np.argsort(p, kind="stable")
    adjusted = np.empty_like(p)
    adjusted[order] = np.minimum(1.0, np.maximum.accumulate((len(p) - np.arange(len(p))) * p[order]))
    return adjusted


def decide_family(rows, delta, alpha: float = 0.05, method: str = "holm", pairs_per_seed=None) -> Family:
    """One verdict per effect, the family-wise error rate over all of them held at alpha.

    The family: for each of the m effects, H0 "mean = 0" (difference) and H0 "|mean| >= δ" (TOST), N = 2m
    hypotheses in one Holm step-down (an effect without a spread counts, with p = 1, so N is fixed by the report).
    At most one of an effect's two nulls can be true, so N = 2m is conservative (Shaffer 1986 could use m), but
    plain and exactly Holm's. The rule, on the adjusted p-values:
      better / worse  when adj p_difference < alpha (by the sign of the mean); if adj p_equivalence < alpha too,
                      the verdict stays better / worse and the reason says the difference is smaller than δ;
      equivalent      otherwise, when adj p_equivalence < alpha;
      undecided       otherwise, with Stein's total seeds from this spread (``stein_total_seeds``).
    The adjusted interval is Bonferroni's, two-sided 1 - alpha/N. If it excludes 0 then N * p_difference < alpha,
    so Holm (never stricter than Bonferroni) says better/worse; if it lies inside ±δ, each one-sided p is below
    alpha/(2N), so Holm says equivalent (or better/worse, smaller than δ). The converse can fail: Holm's later steps
    test at alpha/(N - i + 1), and TOST is one-sided at each bound, so a verdict may stand while the adjusted interval
    still touches 0 or ±δ; the reason then says so. ``method="bonferroni"`` decides by p*N instead; "none" not at all.
    A Stein row (n = N, std = pilot sd, df = n0 - 1, see ``stein_row``) is tested with Stein's t(n0 - 1) pivot.
    ``pairs_per_seed`` (one per row; default 1): an effect paired on other axes too has k pairs per seed, so its
    Stein total of N pairs is ceil(N / k) seeds.
    """
    delta, alpha = _check(delta, alpha)
    rows = _rows(rows)
    per_seed = _per_seed(pairs_per_seed, len(rows))
    adjusted = adjust([p for row in rows for p in _p_values(row, delta)], method).reshape(-1, 2)
    divisor = _divisor(method, len(rows))
    decisions = tuple(
        _decide(row, adj, delta, alpha, divisor, k) for row, adj, k in zip(rows, adjusted, per_seed, strict=True)
    )
    return Family(decisions, method, alpha, delta, len(rows))


def _per_seed(pairs_per_seed, count: int) -> list[int]:
    """Pairs per seed of each row (1 when not given); each at least 1."""
    if pairs_per_seed is None:
        return [1] * count
    values = [max(1, int(k)) for k in pairs_per_seed]
    if len(values) != count:
        raise ValueError(f"pairs_per_seed has {len(values)} values for {count} rows")
    return values


def _decide(row: Row, adj: np.ndarray, delta: float, alpha: float, divisor: int, per_seed: int = 1) -> Decision:
    n, mean, std, df = row
    p_difference, p_equivalence = _p_values(row, delta)
    low, high = _interval(row, alpha)
    adj_low, adj_high = _interval(row, alpha / divisor)
    adj_difference, adj_equivalence = float(adj[0]), float(adj[1])
    needed = None
    if not _testable(row):
        verdict = "undecided"
        why = "no pairs" if n == 0 else "one seed: no spread" if n == 1 else "no spread (std is not a number)"
        reason = f"undecided: {why}, so no test and no seed plan (a pilot needs 2 seeds, better 3 or more)"
    elif adj_difference < alpha:
        verdict = "better" if mean < 0 else "worse"
        reason = f"{verdict} by {abs(mean):.4f} nats: adjusted p {adj_difference:.2g} < {alpha:g}"
        if adj_equivalence < alpha:
            reason += f", but by less than δ = {delta:g} (adjusted TOST p {adj_equivalence:.2g})"
        if adj_low <= 0 <= adj_high:
            reason += "; the adjusted interval still reaches 0 (Holm's later steps are less strict than Bonferroni)"
    elif adj_equivalence < alpha:
        verdict = "equivalent"
        reason = f"equivalent within ±{delta:g} nats: adjusted TOST p {adj_equivalence:.2g} < {alpha:g}"
        if not -delta < adj_low <= adj_high < delta:
            reason += "; the adjusted interval still reaches past ±δ (TOST is one-sided at each bound)"
    else:
        verdict = "undecided"
        reason = (
            f"undecided: neither a difference (adjusted p {adj_difference:.2g}) nor equivalence within "
            f"±{delta:g} (adjusted TOST p {adj_equivalence:.2g}) is shown"
        )
        pilot_seeds = (df + 1) // per_seed
        if pilot_seeds < MIN_PILOT_SEEDS:
            reason += (
                f"; no seed plan from {pilot_seeds} seed{'s' if pilot_seeds != 1 else ''} per variant (a plan "
                f"needs a pilot of {MIN_PILOT_SEEDS})"
            )
        else:
            needed = math.ceil(stein_total_seeds(std, df + 1, delta, alpha, divisor) / per_seed)
            if needed > PRACTICAL_MAX_SEEDS:
                reason += f"; {out_of_reach(mean, std, delta)}"
            else:
                plug_in = math.ceil(seeds_needed(std, delta, alpha, divisor) / per_seed)
                reason += (
                    f"; Stein's two-stage plan from this spread needs {needed} seeds (about {plug_in} if the "
                    f"spread were exactly {std:.4g})"
                )
                if per_seed > 1:
                    reason += f" ({per_seed} pairs per seed)"
    return Decision(
        verdict,
        n,
        mean,
        std,
        low,
        high,
        adj_low,
        adj_high,
        p_difference,
        p_equivalence,
        adj_difference,
        adj_equivalence,
        needed,
        reason,
    )


def out_of_reach(mean: float, std: float, delta: float) -> str:
    """Why an effect needs more than ``PRACTICAL_MAX_SEEDS`` seeds, in words: its difference against the noise of
    its pairs (their sd), and the ±δ/2 its interval would have to shrink to (which decides it either way)."""
    ratio = abs(mean) / std if std > 0 else math.inf
    size = f"its difference, {mean:+.4f} nats, is {_times(ratio)} the noise of its pairs (sd {std:.4f} nats)"
    pin = f"pinning it within ±δ/2 = ±{delta / 2:g} nats would take more than {PRACTICAL_MAX_SEEDS:,} seeds per variant"
    if ratio >= 3:
        return f"{size}: its sign is clear, but {pin}"
    return (
        f"{size}: {pin}, so at δ = {delta:g} it is below what this setup resolves at a practical cost (a larger δ, "
        "or less noise, would decide it)"
    )


def _times(ratio: float) -> str:
    if ratio < 0.095:
        return "a small fraction of"
    if ratio < 0.95:
        return f"{ratio:.1f} times"
    if ratio < 1.05:
        return "about as large as"
    return f"{ratio:.2g} times" if ratio < 10 else f"{ratio:,.0f} times"


def seeds_needed(std: float, delta, alpha: float = 0.05, family_size: int = 1) -> int:
    """The smallest n >= 2 with t_{1 - a/2, n - 1} * std / sqrt(n) <= δ/2, a = alpha / family_size, taking the
    observed std as the truth (a plug-in figure; ``stein_total_seeds`` is the one with a guarantee).

    Why δ/2: an interval mean ± h with h <= δ/2 either excludes 0 (|mean| > h) or has |mean| <= h, and then
    |mean| + h <= 2h = δ, so it lies inside ±δ (up to the boundary): every effect is decided. With h = δ,
    "equivalent" would need a mean of exactly 0. t falls as n grows, so n is found by counting up from the normal
    bound (z * std / h)^2, below which no n can do (t > z).
    """
    delta, alpha = _check(delta, alpha)
    if not (math.isfinite(std) and std >= 0):
        raise ValueError(f"std must be a finite number >= 0, got {std!r}")
    a, half = alpha / family_size, delta / 2
    n = max(2, math.floor((float(ndtri(1 - a / 2)) * std / half) ** 2))
    while _t(a, n - 1) * std / math.sqrt(n) > half:
        n += 1
    return n


def stein_total_seeds(pilot_std: float, pilot_n: int, delta, alpha: float = 0.05, family_size: int = 1) -> int:
    """Stein (1945), "A two-sample test for a linear hypothesis whose power is independent of the variance",
    Ann. Math. Statist. 16(3):243-258: from a pilot of n0 values with sd s0, the total N = max(n0, ceil((t * s0 /
    h)^2)), t = t_{1 - a/2, n0 - 1}, h = δ/2, a = alpha / family_size. Its final interval (``stein_interval``) has
    half-width t * s0 / sqrt(N) <= h, so it decides the effect (see ``seeds_needed`` for why δ/2), and coverage
    1 - a whatever the true sigma: N depends on the pilot's spreads alone, independent of its means under normality,
    so sqrt(N) (mean_N - mu) / s0 is exactly t(n0 - 1). N must therefore be planned from the spreads only."""
    delta, alpha = _check(delta, alpha)
    if pilot_n < 2 or not (math.isfinite(pilot_std) and pilot_std >= 0):
        raise ValueError(f"a Stein pilot needs n0 >= 2 values and a finite sd, got n0={pilot_n}, sd={pilot_std!r}")
    return max(pilot_n, math.ceil((_t(alpha / family_size, pilot_n - 1) * pilot_std / (delta / 2)) ** 2))


def stein_row(values, pilot_n: int) -> Row:
    """(N, mean of all N values, sd of the first pilot_n, pilot_n - 1): a row ``decide_family`` tests with Stein's
    pivot. ``values`` in seed order, the pilot's seeds first."""
    values = np.asarray(values, dtype=float)
    if pilot_n < 2 or len(values) < pilot_n:
        raise ValueError(f"need the pilot's {pilot_n} >= 2 values first, got {len(values)} values")
    return len(values), float(values.mean()), float(values[:pilot_n].std(ddof=1)), pilot_n - 1


def stein_interval(values, pilot_n: int, alpha: float = 0.05, family_size: int = 1) -> tuple[float, float]:
    """Stein's final interval: mean of all N values ± t_{1 - a/2, n0 - 1} * s0 / sqrt(N), s0 from the pilot only."""
    return _interval(stein_row(values, pilot_n), alpha / family_size)


@dataclass(frozen=True)
class Plan:
    """Seeds to train per variant (the largest need within reach, capped), each effect's Stein total (None: no
    spread), whether --max-seeds cut it short, and whether it is beyond any practical number of seeds."""

    seeds: int
    needed: tuple[int | None, ...]
    capped: tuple[bool, ...]
    family_size: int
    max_seeds: int
    beyond: tuple[bool, ...] = ()
    rows: tuple[Row, ...] = ()  # the pilot rows (nats), for the words of an effect beyond reach
    delta: float = math.nan
    pilot_n: int = 0

    def describe(self, labels: list[str] | None = None) -> str:
        """The plan in words: the seeds per variant, the effects --max-seeds cuts short (with their need), and those
        beyond ``PRACTICAL_MAX_SEEDS`` (in words, no number)."""
        labels = labels or [f"effect {i}" for i in range(len(self.needed))]
        over = [f"{label} ({need})" for label, need, cap in zip(labels, self.needed, self.capped, strict=True) if cap]
        capped = f"; capped at --max-seeds {self.max_seeds}, short for {', '.join(over)}" if over else ""
        text = f"Stein's two-stage plan: train {self.seeds} seeds per variant{capped}."
        if self.seeds <= self.pilot_n:
            text = "Stein's two-stage plan: the pilot's seeds are all it needs."
        far = [(label, row) for label, row, b in zip(labels, self.rows, self.beyond, strict=False) if b]
        if far:
            text += (
                " Beyond reach, left out of the plan: "
                + "; ".join(f"{label}: {out_of_reach(row[1], row[2], self.delta)}" for label, row in far)
                + "."
            )
        return text


def plan_seeds(
    rows,
    delta,
    alpha: float = 0.05,
    *,
    pilot_n: int,
    max_seeds: int,
    method: str = "holm",
    pairs_per_seed=None,
    practical_max: int = PRACTICAL_MAX_SEEDS,
) -> Plan:
    """The second stage from the pilot rows: Stein's N per effect at a = alpha / family size (the family the final
    decisions are adjusted over), and the seeds to train: the largest N of the effects within ``practical_max``, at
    most ``max_seeds``.

    Every effect, not just those the pilot left undecided: a plan that depends on the pilot's means is a second look
    at them, which Stein's exact coverage does not allow (and a pilot verdict would spend alpha once more). So the
    pilot's verdicts are provisional and the final ones come from ``decide_family`` on ``stein_row``s of all N seeds.
    An effect whose N is beyond ``practical_max`` is left out of the plan (``beyond``): that depends on its pilot's
    spread alone, not its mean, so the others keep Stein's guarantee. ``pairs_per_seed`` (one per row; default 1):
    a row's n counts pairs, k per seed, so its N pairs are ceil(N / k) seeds (k * ceil(N / k) >= N pairs: the final
    half-width is still at most δ/2). A pilot below ``MIN_PILOT_SEEDS`` seeds is refused.
    """
    delta, alpha = _check(delta, alpha)
    if pilot_n < MIN_PILOT_SEEDS:
        raise ValueError(f"a plan needs a pilot of at least {MIN_PILOT_SEEDS} seeds per variant, got {pilot_n}")
    if max_seeds < pilot_n:
        raise ValueError(f"--max-seeds ({max_seeds}) is below the pilot's {pilot_n} seeds")
    rows = _rows(rows)
    per_seed = _per_seed(pairs_per_seed, len(rows))
    size = _divisor(method, len(rows))
    needed = tuple(
        max(pilot_n, math.ceil(stein_total_seeds(r[2], r[3] + 1, delta, alpha, size) / k)) if _testable(r) else None
        for r, k in zip(rows, per_seed, strict=True)
    )
    beyond = tuple(need is not None and need > practical_max for need in needed)
    capped = tuple(need is not None and need > max_seeds and not far for need, far in zip(needed, beyond, strict=True))
    within = [need for need, far in zip(needed, beyond, strict=True) if need is not None and not far]
    seeds = min(max_seeds, max([pilot_n, *within]))
    return Plan(seeds, needed, capped, size, max_seeds, beyond, tuple(rows), delta, pilot_n)
