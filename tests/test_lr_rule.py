"""The compress learning rate's decision rule (benchmarks/lr_rule.py), on made-up runs."""
import pytest

from benchmarks.lr_rule import choose, means, rate_of


def runs(table):
    """{setting: [(teacher, {width: acc})...]} -> recipe_study runs."""
    return [{"setting": s, "teacher": t, "widths": w} for s, rows in table.items() for t, w in rows]


def widths(a, b, c, d):
    return {"1.0": a, "0.75": b, "0.5": c, "0.25": d}


def test_means_are_points_against_each_seeds_teacher():
    table = means(runs({"lr1e-4": [(0.80, widths(0.81, 0.80, 0.79, 0.76)), (0.82, widths(0.83, 0.82, 0.80, 0.78))]}))
    row = table[1e-4]
    assert row["n"] == 2
    assert row["1.0"] == pytest.approx(1.0) and row["0.25"] == pytest.approx(-4.0)
    assert row["all"] == pytest.approx((1.0 + 0.0 - 1.5 - 4.0) / 4)
    assert rate_of("lr5e-5") == 5e-5


def test_the_narrowest_width_gates_then_the_mean_decides_then_the_smaller_rate():
    # 4e-4 has the best mean but loses 1 point at width 0.25 against 2e-4: not eligible
    table = {1e-4: {"0.25": -3.0, "all": -1.0}, 2e-4: {"0.25": -1.0, "all": -0.6}, 4e-4: {"0.25": -2.0, "all": 0.0}}
    assert choose(table) == 2e-4
    # within 0.1 point on the mean: the smaller rate
    table = {1e-4: {"0.25": -1.2, "all": -0.55}, 2e-4: {"0.25": -1.0, "all": -0.5}}
    assert choose(table) == 1e-4
    # otherwise the best mean among the eligible
    table = {1e-4: {"0.25": -1.2, "all": -0.8}, 2e-4: {"0.25": -1.0, "all": -0.5}}
    assert choose(table) == 2e-4
