"""dynabert.deploy.choose on tables of known candidates: Pareto front, constraints, ties, nothing meets them."""
import pytest

from dynabert.deploy.choose import Constraints, choose, pareto_front
from dynabert.errors import UserError


def row(name, metric, latency_ms, parameters=20_000_000, size_mb=80.0):
    return {"name": name, "metric": metric, "latency_ms": latency_ms, "parameters": parameters, "size_mb": size_mb}


# Hand-made: A and B tie on metric (B faster); E ties B on metric and latency but is smaller.
TABLE = [
    row("A", 0.90, 100.0, 22_000_000, 90.0),
    row("B", 0.90, 60.0, 22_000_000, 80.0),
    row("C", 0.88, 30.0, 17_000_000, 70.0),
    row("D", 0.85, 10.0, 14_000_000, 20.0),
    row("E", 0.90, 60.0, 22_000_000, 50.0),
]


def test_pareto_front_of_known_points():
    points = [row("p0", 0.90, 100.0), row("p1", 0.90, 60.0), row("p2", 0.88, 30.0), row("p3", 0.85, 10.0),
              row("p4", 0.84, 20.0), row("p5", 0.88, 40.0)]
    # p0 is dominated by p1 (same metric, faster), p4 by p3 (better and faster), p5 by p2 (same, faster).
    assert pareto_front(points) == [1, 2, 3]


def test_identical_points_are_both_on_the_front():
    assert pareto_front([row("x", 0.8, 5.0), row("y", 0.8, 5.0), row("z", 0.7, 6.0)]) == [0, 1]


def test_no_constraints_highest_metric_then_lower_latency_then_smaller_size():
    assert choose(TABLE, Constraints())["name"] == "E"


def test_tie_on_metric_goes_to_lower_latency():
    without_e = [r for r in TABLE if r["name"] != "E"]
    assert choose(without_e, Constraints())["name"] == "B"


@pytest.mark.parametrize("constraints, expected", [
    (Constraints(max_latency_ms=50), "C"),
    (Constraints(max_latency_ms=60), "E"),
    (Constraints(min_metric=0.89, max_size_mb=85), "E"),
    (Constraints(max_size_mb=30), "D"),
    (Constraints(max_params=18_000_000), "C"),
    (Constraints(max_params=18_000_000, max_size_mb=69.9), "D"),
    (Constraints(min_metric=0.86, max_latency_ms=40, max_params=17_000_000, max_size_mb=70), "C"),
])
def test_best_among_those_meeting_every_constraint(constraints, expected):
    assert choose(TABLE, constraints)["name"] == expected


def test_a_bound_is_inclusive():
    assert choose(TABLE, Constraints(max_latency_ms=10.0))["name"] == "D"
    assert choose(TABLE, Constraints(min_metric=0.90, max_latency_ms=60.0))["name"] == "E"


def test_nothing_meets_them_is_a_user_error_naming_the_closest():
    with pytest.raises(UserError) as err:
        choose(TABLE, Constraints(max_latency_ms=5, min_metric=0.89))
    message = str(err.value)
    assert err.value.exit_code == 2 and "\n" not in message
    assert message.startswith("no candidate meets --max-latency-ms 5, --min-metric 0.89; closest: ")
    # Summed relative shortfalls: D (10-5)/5 + (0.89-0.85)/0.89 = 1.045; C 5 + 0.011 = 5.011;
    # B and E 11 (E first: same metric and latency, smaller); A 19.
    names = [part.split(" (")[0] for part in message.split("closest: ")[1].split("), ")]
    assert names == ["D", "C", "E"]
    assert "latency 10.0 ms misses by 100%" in message


def test_choice_needs_candidates():
    with pytest.raises(UserError):
        choose([], Constraints())
