"""The canary's routing and its promote/roll-back rule (service/canary.py), on numbers."""

from __future__ import annotations

from service.canary import MIN_REQUESTS, Window, routed, verdict


def compared(p_acc, c_acc, labeled=300, p_err=(0, 500), c_err=(0, 100), p99=(50, 60)):
    def side(acc, errors, p99_ms):
        window = Window()
        for i in range(errors[1]):
            window.add("x", p99_ms / 1000, i >= errors[0])
        return {
            "live": {"labeled": labeled, "accuracy": acc} if acc is not None else None,
            "this_worker": window.summary("x"),
        }

    return {"production": side(p_acc, p_err, p99[0]), "canary": side(c_acc, c_err, p99[1])}


def test_a_key_always_goes_the_same_way_and_the_share_follows_the_fraction() -> None:
    keys = [f"user-{i}" for i in range(4000)]
    first = [routed("m", k, 0.25) for k in keys]
    assert first == [routed("m", k, 0.25) for k in keys]  # sticky (and the same everywhere)
    assert 0.22 < sum(first) / len(keys) < 0.28
    assert not any(routed("m", k, 0.0) for k in keys[:100])
    assert all(routed("m", k, 1.0) for k in keys[:100])
    assert [routed("m", k, 0.1) for k in keys[:500]] != [
        routed("other", k, 0.1) for k in keys[:500]
    ]


def test_the_rule_waits_then_promotes_or_rolls_back() -> None:
    assert verdict(compared(0.9, 0.9, labeled=10), 200, 0.0) is None  # not enough feedback
    assert verdict(compared(None, 0.9), 200, 0.0) is None
    assert verdict(compared(0.9, 0.95, c_err=(0, MIN_REQUESTS - 1)), 200, 0.0) is None  # unseen
    promote, why = verdict(compared(0.90, 0.91), 200, 0.0)
    assert promote and "0.9100 vs 0.9000" in why
    assert verdict(compared(0.90, 0.88), 200, 0.0)[0] is False  # worse
    assert verdict(compared(0.90, 0.88), 200, 0.05)[0] is True  # within the tolerance
    assert verdict(compared(0.9, 0.95, p99=(50, 200)), 200, 0.0)[0] is False  # slow
    assert verdict(compared(0.9, 0.95, p99=(50, 200)), 200, 0.0, latency_factor=5)[0] is True


def test_errors_roll_back_before_any_feedback() -> None:
    failing = compared(None, None, labeled=0, c_err=(10, MIN_REQUESTS))
    promote, why = verdict(failing, 200, 0.0)
    assert promote is False and "error rate 20.00%" in why
    few = compared(None, None, labeled=0, c_err=(10, MIN_REQUESTS - 1))
    assert verdict(few, 200, 0.0) is None  # too few requests to judge errors
