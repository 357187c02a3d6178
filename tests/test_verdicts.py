"""Verdicts on hand-made effects whose answers were worked out by hand, and Stein's two-stage design simulated.

t quantiles in the comments come from a printed Student-t table (two-sided 0.10 / 0.05 / 0.02 / 0.01 columns):
    df:        3      4     16     17     29     30
    t_0.95   2.353  2.132
    t_0.975  3.182  2.776  2.120  2.110  2.045  2.042
    t_0.99   4.541  3.747
    t_0.995  5.841  4.604
"""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from harness.report.verdicts import (
    METHOD,
    adjust,
    decide_family,
    plan_seeds,
    seeds_needed,
    stein_interval,
    stein_row,
    stein_total_seeds,
)

DELTA = 0.01
SE5 = 0.01 / math.sqrt(5)  # std 0.01 over n = 5 pairs: 0.004472


def one(row, alpha=0.10, delta=DELTA, method="holm"):
    """A single effect is a family of N = 2 (its difference and its equivalence): Holm multiplies the smaller p by 2,
    and the adjusted interval is at 1 - 0.10/2 = 0.95, so t_0.975 from the table."""
    family = decide_family([row], delta, alpha, method)
    assert family.size == 2
    return family.decisions[0]


def test_clear_better_and_worse():
    # n=5, mean -0.05, std 0.01: t = 0.05 / 0.004472 = 11.18 > t_0.975,4 = 2.776, so p_difference < 0.05 and
    # 2p < 0.10: better. Adjusted (95%) interval: -0.05 ± 2.776 * 0.004472 = -0.05 ± 0.01241.
    # Unadjusted (90%): -0.05 ± 2.132 * 0.004472 = -0.05 ± 0.00953.
    better = one((5, -0.05, 0.01))
    assert better.verdict == "better" and better.seeds_needed is None
    assert (better.adj_ci_low, better.adj_ci_high) == pytest.approx((-0.06241, -0.03759), abs=2e-5)
    assert (better.ci_low, better.ci_high) == pytest.approx((-0.05953, -0.04047), abs=2e-5)
    assert better.p_equivalence > 0.99  # (mean + δ) / se = -8.9: nowhere near equivalent
    worse = one((5, 0.05, 0.01))
    assert worse.verdict == "worse" and worse.adj_ci_low == pytest.approx(0.03759, abs=2e-5)


def test_equivalent():
    # n=5, mean 0.001, std 0.005, se 0.002236. Difference: t = 0.447 < t_0.95,4 = 2.132, so p > 0.10: not shown.
    # TOST, upper bound: t = (0.001 - 0.01) / 0.002236 = -4.025, beyond t_0.99,4 = 3.747, so p < 0.01, and Holm's
    # 2p < 0.02 < 0.10: equivalent. Adjusted interval 0.001 ± 2.776 * 0.002236 = [-0.00521, 0.00721], inside ±0.01.
    decision = one((5, 0.001, 0.005))
    assert decision.verdict == "equivalent" and decision.seeds_needed is None
    assert 0.005 < decision.p_equivalence < 0.01 and decision.p_difference > 0.10
    assert (decision.adj_ci_low, decision.adj_ci_high) == pytest.approx((-0.00521, 0.00721), abs=2e-5)
    assert "still reaches" not in decision.reason


def test_undecided_says_how_many_seeds():
    # n=5, mean 0.004, std 0.01. Difference: t = 0.894 < 2.132, p > 0.10. TOST upper: t = -0.006 / 0.004472 = -1.342,
    # short of t_0.90,4 = 1.533, p > 0.10. Both p > 0.10, so Holm's 2 * min >= 0.10: undecided.
    # Stein from this pilot: a = 0.10 / 2 = 0.05, t_0.975,4 = 2.776, h = δ/2 = 0.005:
    #   (2.776 * 0.01 / 0.005)^2 = 5.552^2 = 30.8  ->  31 seeds.
    # Plug-in: t_0.975,n-1 * 0.01 / sqrt(n) <= 0.005  <=>  n / t^2 >= 4:
    #   n = 17: t_16 = 2.120, 17 / 4.494 = 3.78 (no);  n = 18: t_17 = 2.110, 18 / 4.452 = 4.04 (yes)  ->  18.
    decision = one((5, 0.004, 0.01))
    assert decision.verdict == "undecided"
    assert decision.seeds_needed == 31
    assert "31 seeds" in decision.reason and "about 18" in decision.reason


def test_holm_changes_the_unadjusted_verdict():
    # Two effects, alpha = 0.06, N = 4. A: n=5, mean -0.2, std 0.01: t = 44.7 > t_0.995,4 = 4.604, p < 0.01 < 0.06/4,
    # rejected at step 1; its TOST p ~ 1 (mean far below -δ). B: mean -0.0143: t = 0.0143 / 0.004472 = 3.198.
    # Unadjusted: 3.198 > t_0.975,4 = 2.776, so p < 0.05 < 0.06: better.
    # Holm step 2 tests the smallest remaining p at 0.06/3 = 0.02: B's difference, 3.198 < t_0.99,4 = 3.747, so
    # p > 0.02; B's TOST lower bound t = (-0.0143 + 0.01) / 0.004472 = -0.96, p > 0.5. Holm stops: B is undecided.
    rows = [(5, -0.2, 0.01), (5, -0.0143, 0.01)]
    unadjusted = decide_family(rows, DELTA, 0.06, method="none").decisions
    holm = decide_family(rows, DELTA, 0.06)
    assert [d.verdict for d in unadjusted] == ["better", "better"]
    assert [d.verdict for d in holm.decisions] == ["better", "undecided"]
    assert holm.size == 4 and "family of 4 hypotheses" in holm.describe() and "2 effects" in holm.describe()
    bonferroni = decide_family(rows, DELTA, 0.06, method="bonferroni").decisions  # 4p > 0.08 > 0.06: the same
    assert [d.verdict for d in bonferroni] == ["better", "undecided"]
    # The unadjusted interval is shown beside the adjusted verdict, and is the same whatever the method.
    assert holm.decisions[1].ci_high == unadjusted[1].ci_high < 0 < holm.decisions[1].adj_ci_high


def test_holm_decides_where_the_bonferroni_interval_does_not():
    # B built with p_difference = 0.012 exactly (scipy's t isf, independent of the module). alpha = 0.04, N = 4:
    # Holm: A at step 1 (p ~ 0), then B at 0.04/3 = 0.0133 > 0.012: better. Bonferroni: 4 * 0.012 = 0.048 > 0.04,
    # and its 99% interval still reaches 0; the reason says so.
    mean_b = -float(stats.t.isf(0.006, 4)) * SE5
    rows = [(5, -0.2, 0.01), (5, mean_b, 0.01)]
    holm = decide_family(rows, DELTA, 0.04).decisions[1]
    assert holm.p_difference == pytest.approx(0.012)
    assert holm.verdict == "better" and holm.adj_ci_high > 0 and "still reaches 0" in holm.reason
    assert decide_family(rows, DELTA, 0.04, method="bonferroni").decisions[1].verdict == "undecided"


def test_better_but_smaller_than_delta():
    # n=5, mean -0.005, std 0.001: 95% interval -0.005 ± 2.776 * 0.000447 = [-0.00624, -0.00376], excludes 0 and lies
    # inside ±0.01: a real difference that is practically negligible. Reported as better, with the caveat.
    decision = one((5, -0.005, 0.001))
    assert decision.verdict == "better" and "less than δ" in decision.reason


def test_one_seed_and_zero_spread():
    single = decide_family([(1, -0.1, math.nan), (5, -0.05, 0.01)], DELTA, 0.10)
    assert single.size == 4  # the seedless effect still counts in the family
    decision = single.decisions[0]
    assert decision.verdict == "undecided" and decision.seeds_needed is None
    assert "one seed: no spread" in decision.reason
    assert math.isnan(decision.p_difference) and decision.adj_p_difference == 1.0
    # std 0 with n >= 2: decided by the mean, with no NaN.
    better, equivalent, worse = decide_family([(3, -0.02, 0.0), (3, 0.0, 0.0), (3, 0.02, 0.0)], DELTA).decisions
    assert (better.verdict, equivalent.verdict, worse.verdict) == ("better", "equivalent", "worse")
    assert better.ci_low == better.ci_high == -0.02 and worse.p_equivalence == 1.0
    for d in (better, equivalent, worse):
        assert not any(math.isnan(v) for v in (d.p_difference, d.p_equivalence, d.adj_ci_low, d.adj_ci_high))


def test_effects_table_rows_and_frame():
    table = pd.DataFrame({"n_pairs": [5, 5, 1], "mean_difference": [-0.05, 0.001, 0.3], "std": [0.01, 0.005, np.nan]})
    family = decide_family(table, DELTA, 0.10)
    assert [d.verdict for d in family.decisions] == [
        d.verdict
        for d in decide_family([(5, -0.05, 0.01), (5, 0.001, 0.005), (1, 0.3, math.nan)], DELTA, 0.10).decisions
    ]
    # N = 6: A's difference p (t = 11.2) is far below 0.10/6; then B's TOST p (t = -4.025, p < 0.01 by the table) times
    # 5 is below 0.05 < 0.10: equivalent; the seedless row stays undecided.
    frame = family.frame()
    assert list(frame["verdict"]) == ["better", "equivalent", "undecided"]
    assert frame["seeds_needed"].isna().all() and "Holm 1979" in METHOD and "Stein 1945" in METHOD


def test_adjust_by_hand():
    # p = 0.01, 0.04, 0.03, 0.005. Sorted: 0.005 * 4 = 0.02, 0.01 * 3 = 0.03, 0.03 * 2 = 0.06, 0.04 * 1 = 0.04 -> the
    # running maximum keeps 0.06. Back in order: 0.03, 0.06, 0.06, 0.02.
    assert adjust([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert adjust([0.01, 0.04, 0.03, 0.005], "bonferroni") == pytest.approx([0.04, 0.16, 0.12, 0.02])
    assert adjust([np.nan, 0.6]) == pytest.approx([1.0, 1.0])


def test_seeds_needed_by_hand():
    # std 0.027, δ 0.02 (h = 0.01), alpha 0.05: need t_0.975,n-1 * 0.027 / sqrt(n) <= 0.01, i.e. n / t^2 >= 7.29.
    #   n = 30: t_29 = 2.045, 2.045 * 0.027 / 5.477 = 0.01008 (no)
    #   n = 31: t_30 = 2.042, 2.042 * 0.027 / 5.568 = 0.00990 (yes)  ->  31.
    # Closed-form check: the normal bound (1.96 * 0.027 / 0.01)^2 = 28.0 is below it, as it must be (t > z).
    assert seeds_needed(0.027, 0.02, 0.05) == 31
    assert seeds_needed(0.0, 0.02) == 2
    # Stein, pilot n0 = 4 (t_0.975,3 = 3.182): (3.182 * 0.027 / 0.01)^2 = 8.591^2 = 73.8 -> 74.
    assert stein_total_seeds(0.027, 4, 0.02, 0.05) == 74
    assert stein_total_seeds(0.001, 4, 0.02, 0.05) == 4  # never below the pilot


def test_stein_two_stage_coverage():
    # A normal metric with known mean and sigma; pilot n0 = 4, the second stage to Stein's N, 20,000 repetitions.
    # The second stage's sum is drawn in closed form (a sum of k normals is N(k mu, k sigma^2)), so it is vectorised.
    # Stein's interval covers with probability exactly 0.95; the binomial standard error of the observed rate is
    # sqrt(0.95 * 0.05 / 20000) = 0.0015, and the tolerance is 4 of them, 0.0062.
    rng = np.random.default_rng(1945)
    reps, n0, mu, sigma, delta, alpha = 20_000, 4, 0.003, 0.03, 0.02, 0.05
    pilot = rng.normal(mu, sigma, (reps, n0))
    s0 = pilot.std(axis=1, ddof=1)
    t3 = stats.t.ppf(1 - alpha / 2, n0 - 1)
    total = np.maximum(n0, np.ceil((t3 * s0 / (delta / 2)) ** 2)).astype(int)
    assert [stein_total_seeds(s, n0, delta, alpha) for s in s0[:200]] == total[:200].tolist()
    extra = total - n0
    mean = (pilot.sum(axis=1) + extra * mu + np.sqrt(extra) * sigma * rng.standard_normal(reps)) / total
    half = t3 * s0 / np.sqrt(total)
    coverage = np.mean(np.abs(mean - mu) <= half)
    assert abs(coverage - 0.95) < 4 * math.sqrt(0.95 * 0.05 / reps), coverage
    assert (half <= delta / 2 + 1e-12).all()  # every repetition is decided: excludes 0 or lies inside ±δ
    # The module's interval on real draws is that formula.
    for i in range(20):
        values = np.concatenate([pilot[i], rng.normal(mu, sigma, extra[i])])
        low, high = stein_interval(values, n0, alpha)
        centre = values.mean()
        assert (low, high) == pytest.approx((centre - half[i], centre + half[i]))


def test_stein_plan_decides_every_effect():
    # Three effects (true means -0.03, 0, 0.008 nats, sigma 0.02), pilot of 4: plan from the pilot spreads, train to
    # the plan, and decide once on Stein rows. None is capped, so none can stay undecided.
    rng = np.random.default_rng(7)
    means, n0, delta = [-0.03, 0.0, 0.008], 4, 0.02
    pilots = [rng.normal(m, 0.02, n0) for m in means]
    plan = plan_seeds([(n0, p.mean(), p.std(ddof=1)) for p in pilots], delta, pilot_n=n0, max_seeds=10_000)
    assert plan.family_size == 6 and not any(plan.capped) and plan.seeds == max(plan.needed)
    finals = [
        stein_row(np.concatenate([p, rng.normal(m, 0.02, plan.seeds - n0)]), n0)
        for p, m in zip(pilots, means, strict=True)
    ]
    verdicts = [d.verdict for d in decide_family(finals, delta).decisions]
    assert "undecided" not in verdicts and verdicts[0] == "better"


def test_optional_stopping_inflates_false_positives():
    # Why seeds are planned: under a true null, "add a seed until p < 0.05" (from 3 up to 30 seeds) claims a
    # difference far more often than 5%, while one test at a fixed n = 30 stays at 5% (binomial se 0.0034 at 4,000).
    rng = np.random.default_rng(0)
    reps, n_max = 4_000, 30
    x = rng.standard_normal((reps, n_max))
    n = np.arange(1, n_max + 1)
    mean = x.cumsum(axis=1) / n
    var = ((x**2).cumsum(axis=1) - n * mean**2)[:, 2:] / (n[2:] - 1)  # from n = 3 on
    p = 2 * stats.t.sf(np.abs(mean[:, 2:]) / np.sqrt(var / n[2:]), n[2:] - 1)
    peeking = np.mean((p < 0.05).any(axis=1))
    fixed = np.mean(p[:, -1] < 0.05)
    assert abs(fixed - 0.05) < 4 * math.sqrt(0.05 * 0.95 / reps)
    assert peeking > 0.15, peeking


def test_plan_cap():
    # Two effects, alpha 0.2, family 4: a = 0.05, pilot n0 = 4, t_0.975,3 = 3.182, δ 0.02 (h 0.01).
    #   std 0.027: (3.182 * 0.027 / 0.01)^2 = 73.8 -> 74;  std 0.002: (3.182 * 0.002 / 0.01)^2 = 0.4 -> the pilot's 4.
    rows = [(4, -0.01, 0.027), (4, 0.0, 0.002), (1, 0.1, math.nan)]
    plan = plan_seeds(rows[:2], 0.02, 0.2, pilot_n=4, max_seeds=20)
    assert (plan.seeds, plan.needed, plan.capped) == (20, (74, 4), (True, False))
    assert "max-seeds 20" in plan.describe(["ffn", "bigram"]) and "ffn (74)" in plan.describe(["ffn", "bigram"])
    assert plan_seeds(rows[:2], 0.02, 0.2, pilot_n=4, max_seeds=100).seeds == 74
    assert plan_seeds(rows, 0.02, 0.2, pilot_n=4, max_seeds=100).needed[2] is None  # one seed: nothing to plan from


@pytest.mark.parametrize("delta", [0, -0.01, math.nan, math.inf, "0.01", None, True])
def test_bad_practical_difference(delta):
    with pytest.raises(ValueError, match="practical_difference"):
        decide_family([(5, 0.0, 0.01)], delta)
    with pytest.raises(ValueError, match="practical_difference"):
        seeds_needed(0.01, delta)


def test_bad_plan_and_method():
    with pytest.raises(ValueError, match="max-seeds"):
        plan_seeds([(4, 0.0, 0.01)], 0.01, pilot_n=4, max_seeds=3)
    with pytest.raises(ValueError, match="method"):
        decide_family([(4, 0.0, 0.01)], 0.01, method="sidak")


def test_pairs_per_seed_turn_stein_pairs_into_seeds():
    # 6 pairs, mean 0, std 0.02: one effect, family of 2, alpha 0.10, so t_0.975,5 = 2.571 (table). Stein's total:
    # (2.571 * 0.02 / 0.005)^2 = 105.7, so 106 pairs. TOST: (0 + 0.01) / (0.02 / sqrt 6) = 1.22 < 2.015: undecided.
    # Paired on another axis of 2 levels too, each seed gives 2 pairs: ceil(106 / 2) = 53 seeds.
    alone = decide_family([(6, 0.0, 0.02)], DELTA, 0.10).decisions[0]
    paired = decide_family([(6, 0.0, 0.02)], DELTA, 0.10, pairs_per_seed=[2]).decisions[0]
    assert alone.verdict == paired.verdict == "undecided"
    assert (alone.seeds_needed, paired.seeds_needed) == (106, 53) and "2 pairs per seed" in paired.reason
    plan = plan_seeds([(6, 0.0, 0.02)], DELTA, 0.10, pilot_n=3, max_seeds=100, pairs_per_seed=[2])
    assert (plan.seeds, plan.needed, plan.capped) == (53, (53,), (False,))
    with pytest.raises(ValueError, match="pairs_per_seed"):
        decide_family([(6, 0.0, 0.02)], DELTA, 0.10, pairs_per_seed=[2, 2])


def test_no_seed_plan_below_a_pilot_of_three_seeds():
    # n=2, mean 0.004, std 0.01: undecided (t = 0.57 on 1 df). Stein from 1 df would be (t_0.975,1 = 12.706 *
    # 0.01 / 0.005)^2 = 646 seeds: a number nobody can follow, so there is none.
    decision = one((2, 0.004, 0.01))
    assert decision.verdict == "undecided" and decision.seeds_needed is None
    assert "no seed plan from 2 seeds per variant (a plan needs a pilot of 3)" in decision.reason
    assert "646" not in decision.reason
    # 4 pairs from 2 seeds (paired on another axis of 2 levels): still a pilot of 2 seeds per variant.
    paired = decide_family([(4, 0.004, 0.01)], DELTA, 0.10, pairs_per_seed=[2]).decisions[0]
    assert paired.seeds_needed is None and "from 2 seeds per variant" in paired.reason
    # One seed, paired across 2 levels of another axis (a sweep without seeds): 2 pairs, 1 seed.
    single = decide_family([(2, 0.004, 0.01)], DELTA, 0.10, pairs_per_seed=[2]).decisions[0]
    assert single.seeds_needed is None and "from 1 seed per variant" in single.reason
    with pytest.raises(ValueError, match="pilot of at least 3 seeds"):
        plan_seeds([(2, 0.0, 0.01)], DELTA, pilot_n=2, max_seeds=10)


def test_a_need_beyond_1000_seeds_is_said_in_words():
    # n=5, mean 0.004, std 0.1, one effect (a = 0.10 / 2): Stein's N = (t_0.975,4 * 0.1 / 0.005)^2 = (2.776 * 20)^2,
    # about 3,083 seeds. The reason gives the difference against the noise (0.004 / 0.1 = 0.04 of it), not the N.
    decision = one((5, 0.004, 0.1))
    assert decision.verdict == "undecided" and decision.seeds_needed > 1000  # effects.csv keeps the number
    assert str(decision.seeds_needed) not in decision.reason
    assert "its difference, +0.0040 nats, is a small fraction of the noise of its pairs (sd 0.1000 nats)" in (
        decision.reason
    )
    assert "more than 1,000 seeds per variant" in decision.reason


def test_a_plan_leaves_out_what_is_beyond_reach_and_says_why():
    # As test_plan_cap (a = 0.05, pilot 4, t_0.975,3 = 3.182, δ 0.02): std 0.027 needs 74. A second effect, mean 0.5,
    # std 0.2: (3.182 * 0.2 / 0.01)^2 = 63.64^2 = 4,050 seeds, beyond 1,000: left out, so the plan is 74, not 4,050.
    plan = plan_seeds([(4, -0.01, 0.027), (4, 0.5, 0.2)], 0.02, 0.2, pilot_n=4, max_seeds=10_000)
    assert plan.seeds == 74 and plan.beyond == (False, True) and plan.capped == (False, False)
    text = plan.describe(["lr", "batch"])
    assert text.startswith("Stein's two-stage plan: train 74 seeds per variant.")
    assert "Beyond reach, left out of the plan: batch: its difference, +0.5000 nats, is 2.5 times the noise" in text
    assert "4050" not in text and "4,050" not in text and "more than 1,000 seeds per variant" in text
    # Only the far one: the pilot is all the plan can use.
    alone = plan_seeds([(4, 0.5, 0.2)], 0.02, 0.1, pilot_n=4, max_seeds=10_000)
    assert alone.seeds == 4 and "the pilot's seeds are all it needs" in alone.describe(["batch"])
