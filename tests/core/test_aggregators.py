"""Aggregators: each formula against an independent computation, and their invariants."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from verl_variance.core.aggregators import AGGREGATORS, aggregate

members = st.lists(
    st.lists(st.floats(-20, 20, allow_nan=False, width=32), min_size=2, max_size=8), min_size=1, max_size=6
).filter(lambda rows: len({len(r) for r in rows}) == 1)

PARAMS = {
    "mean": {},
    "member": {"index": 1},
    "min": {},
    "uwo": {"lam": 0.5},
    "lcb": {"k": 1.0},
    "softmin": {"tau": 2.0},
}
MONOTONE = ("mean", "member", "min", "softmin")


def test_registry_has_every_aggregator():
    assert set(AGGREGATORS) == set(PARAMS)


def test_formulas_against_hand_computation():
    rewards = torch.tensor([[1.0, 2.0, 6.0]], dtype=torch.float64)
    mean, var = 3.0, ((1 - 3) ** 2 + (2 - 3) ** 2 + (6 - 3) ** 2) / 2  # 7
    assert aggregate("mean", rewards).item() == pytest.approx(mean)
    assert aggregate("member", rewards, index=2).item() == 6.0
    assert aggregate("min", rewards).item() == 1.0
    assert aggregate("uwo", rewards, lam=0.1).item() == pytest.approx(mean - 0.1 * var)
    assert aggregate("lcb", rewards, k=0.5).item() == pytest.approx(mean - 0.5 * math.sqrt(var))
    softmin = -2.0 * math.log(sum(math.exp(-r / 2.0) for r in (1.0, 2.0, 6.0)) / 3)
    assert aggregate("softmin", rewards, tau=2.0).item() == pytest.approx(softmin)
    # a penalty larger than the spread is floored at the worst member
    assert aggregate("lcb", rewards, k=10.0).item() == 1.0


@settings(max_examples=80, deadline=None)
@given(members, st.sampled_from(sorted(PARAMS)))
def test_bounded_by_the_members(rows, name):
    rewards = torch.tensor(rows, dtype=torch.float64)
    out = aggregate(name, rewards, **PARAMS[name])
    assert out.shape == (rewards.shape[0],)
    assert torch.all(out >= rewards.min(dim=1).values - 1e-9)
    assert torch.all(out <= rewards.max(dim=1).values + 1e-9)


@settings(max_examples=80, deadline=None)
@given(members, st.sampled_from(MONOTONE), st.integers(0, 7), st.floats(0.01, 5.0))
def test_monotone_in_every_member(rows, name, column, increase):
    rewards = torch.tensor(rows, dtype=torch.float64)
    raised = rewards.clone()
    raised[:, column % rewards.shape[1]] += increase
    assert torch.all(aggregate(name, raised, **PARAMS[name]) >= aggregate(name, rewards, **PARAMS[name]) - 1e-9)


@settings(max_examples=40, deadline=None)
@given(members, st.sampled_from(["uwo", "lcb"]), st.floats(-5, 5))
def test_uncertainty_penalties_are_monotone_in_a_common_shift(rows, name, shift):
    """UWO and LCB penalise spread by design, so they are not monotone in each member, but moving
    every member up by the same amount never lowers them (the spread is unchanged)."""
    rewards = torch.tensor(rows, dtype=torch.float64)
    base = aggregate(name, rewards, **PARAMS[name])
    torch.testing.assert_close(aggregate(name, rewards + shift, **PARAMS[name]), base + shift)


def test_softmin_limits():
    rewards = torch.tensor([[1.0, 2.0, 6.0]], dtype=torch.float64)
    assert aggregate("softmin", rewards, tau=1e-3).item() == pytest.approx(1.0, abs=1e-2)
    assert aggregate("softmin", rewards, tau=1e4).item() == pytest.approx(3.0, abs=1e-2)


def test_bad_input():
    one_member = torch.ones(3, 1)
    for name in ("uwo", "lcb"):
        with pytest.raises(ValueError, match=f"aggregator '{name}' uses the spread .* got K=1"):
            aggregate(name, one_member)
    assert aggregate("mean", one_member).tolist() == [1.0, 1.0, 1.0]
    with pytest.raises(ValueError, match=r"unknown aggregator 'median'; valid: \["):
        aggregate("median", one_member)
    with pytest.raises(ValueError, match="member index 5 out of range for an ensemble of 1"):
        aggregate("member", one_member, index=5)
    with pytest.raises(ValueError, match="tau must be > 0"):
        aggregate("softmin", torch.ones(2, 3), tau=0.0)


# ---------------------------------------------------------------------------------------------
# Weighted soft-min: RVPO's aggregation (seed 000)
# ---------------------------------------------------------------------------------------------
def test_weighted_softmin_against_hand_computation():
    rewards = torch.tensor([[1.0, -2.0, 0.5]], dtype=torch.float64)
    weights, tau = [0.5, 0.2, 0.3], 0.7
    expected = -tau * math.log(sum(w * math.exp(-r / tau) for w, r in zip(weights, [1.0, -2.0, 0.5], strict=True)))
    assert aggregate("softmin", rewards, tau=tau, weights=weights).item() == pytest.approx(expected, rel=1e-12)


@settings(max_examples=60, deadline=None)
@given(members, st.integers(0, 2**31 - 1))
def test_weighted_softmin_limits(rows, seed):
    """tau -> inf: the weighted mean; tau -> 0: the minimum over objectives of positive weight."""
    rewards = torch.tensor(rows, dtype=torch.float64)
    weights = torch.rand(rewards.shape[1], generator=torch.Generator().manual_seed(seed), dtype=torch.float64) + 0.05
    weights = weights / weights.sum()
    large = aggregate("softmin", rewards, tau=1e7, weights=weights)
    torch.testing.assert_close(large, rewards @ weights, atol=1e-4, rtol=0)
    small = aggregate("softmin", rewards, tau=1e-4, weights=weights)
    torch.testing.assert_close(small, rewards.min(dim=1).values, atol=1e-2, rtol=0)


def test_weighted_softmin_small_spread_is_mean_minus_variance_over_two_tau():
    """A = sum_k w_k A_k - Var_w(A)/(2 tau) + O(spread^3 / tau^2)."""
    base = torch.tensor([[0.3]], dtype=torch.float64)
    offsets = torch.tensor([[0.01, -0.02, 0.015]], dtype=torch.float64)
    rewards, weights, tau = base + offsets, torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64), 0.5
    mean = rewards @ weights
    variance = ((rewards - mean) ** 2) @ weights
    softmin = aggregate("softmin", rewards, tau=tau, weights=weights).item()
    correction = (variance / (2 * tau)).item()
    assert abs(softmin - (mean.item() - correction)) < 0.02 * correction  # the third-order rest is ~1% here


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ([0.5, 0.6], "weights must sum to 1, got .* divide by their sum"),
        ([0.5, 0.25, 0.25], "3 weights for 2 objectives"),
        ([1.5, -0.5], "finite and >= 0"),
        ([float("nan"), 1.0], "finite and >= 0"),
    ],
)
def test_weighted_softmin_bad_weights(weights, message):
    with pytest.raises(ValueError, match=message):
        aggregate("softmin", torch.zeros(2, 2), weights=weights)
