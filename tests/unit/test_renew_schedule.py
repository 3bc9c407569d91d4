"""When an agent renews its lease: by the TTL meshd grants, backing off while renewals fail."""

from __future__ import annotations

from meshagent.uplink import RETRY_RENEW_S, RenewSchedule


def test_renewals_come_every_third_of_the_granted_ttl_spread_so_a_fleet_is_not_in_step():
    s = RenewSchedule()
    waits = [s.renewed(150) for _ in range(200)]
    assert all(40 <= w <= 50 for w in waits)
    assert max(waits) - min(waits) > 5


def test_failed_renewals_back_off_yet_leave_tries_before_the_lease_runs_out():
    s = RenewSchedule()
    s.renewed(150)
    waits = [s.failed() for _ in range(8)]
    assert waits[0] <= 1.5 * RETRY_RENEW_S  # the first retry comes soon
    assert max(waits) > 4 * RETRY_RENEW_S  # ...later ones back off
    assert all(w <= 150 / 4 for w in waits)  # at most a quarter of the TTL: two or more tries in time
    assert 40 <= s.renewed(150) <= 50  # a success ends the backoff
    assert s.failed() <= 1.5 * RETRY_RENEW_S


def test_a_short_ttl_retries_every_retry_interval():
    s = RenewSchedule()
    s.renewed(9)
    assert all(w <= 1.5 * RETRY_RENEW_S for w in (s.failed() for _ in range(6)))
