"""The fleet bench's reading of meshd's own Renew histogram (bench.control.in_meshd)."""

import math

from bench.control import in_meshd

BOUNDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5, math.inf)


def cumulative(per_bucket: list[int]) -> dict[float, float]:
    """Prometheus buckets (each counts every observation at most its bound) from counts per bucket."""
    out, total = {}, 0
    for bound, n in zip(BOUNDS, per_bucket):
        total += n
        out[bound] = float(total)
    return out


def test_the_p99_bucket_and_the_slow_renewals_are_read_from_the_cumulative_counts():
    # 1,000 renewals: 985 within 1 ms, 10 within 25 ms, 3 within 50 ms, 2 within 250 ms
    figures = in_meshd(cumulative([985, 0, 0, 0, 10, 3, 0, 2, 0, 0, 0]))
    assert figures["renewals"] == 1000
    assert figures["p99_at_most_ms"] == 25.0  # the 990th renewal is in the 25 ms bucket
    assert figures["over_25_ms"] == 5 and figures["over_50_ms"] == 2


def test_a_p99_past_the_last_bound_has_no_bound_and_no_renewals_is_said_as_such():
    assert in_meshd(cumulative([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 10]))["p99_at_most_ms"] is None
    assert in_meshd({}) == {"renewals": 0}
    assert in_meshd(cumulative([0] * 11)) == {"renewals": 0}
