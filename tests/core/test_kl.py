"""Variance-weighted KL: formulas against independent computations, and their invariants."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from verl_variance.core.config import VarianceKLConfig
from verl_variance.core.kl import (
    kl_penalty_to_go,
    kl_weight,
    variance_aware_token_rewards,
    variance_weighted_kl_penalty,
)
from verl_variance.core.variance import check_reward_variance, ensemble_reward_variance

variances = st.lists(st.one_of(st.just(0.0), st.floats(1e-4, 50.0)), min_size=2, max_size=16).filter(
    lambda v: any(x > 0 for x in v)
)


def test_weights_match_hand_computation():
    sigma2 = torch.tensor([0.0, 1.0, 4.0, 9.0])
    assert kl_weight(sigma2, "std").kl_weight.tolist() == [0.0, 1.0, 2.0, 3.0]
    assert kl_weight(sigma2, "variance").kl_weight.tolist() == [0.0, 1.0, 4.0, 9.0]
    normalized = kl_weight(sigma2, "std", normalize=True).kl_weight
    torch.testing.assert_close(normalized, torch.tensor([0.0, 1.0, 2.0, 3.0]) / 1.5)
    clipped = kl_weight(sigma2, "variance", min_weight=0.5, max_weight=5.0)
    assert clipped.kl_weight.tolist() == [0.5, 1.0, 4.0, 5.0]
    assert clipped.clipped.tolist() == [True, False, False, True]


def test_token_rewards_match_the_paper_formula():
    """R_t = r_t − β · w · ln(π/π0) on response tokens (k1 estimator), computed by hand."""
    scores = torch.tensor([[0.0, 0.0, 1.0], [0.0, 2.0, 0.0]])
    log_ratio = torch.tensor([[0.1, -0.2, 0.3], [0.5, 0.5, 0.9]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    weight = torch.tensor([2.0, 0.5])
    out = variance_aware_token_rewards(scores, log_ratio * mask, weight, 0.1)
    expected = torch.tensor([[-0.02, 0.04, 1.0 - 0.06], [-0.025, 2.0 - 0.025, 0.0]])
    torch.testing.assert_close(out, expected)


@settings(max_examples=60, deadline=None)
@given(variances, st.sampled_from(["std", "variance"]))
def test_zero_variance_rows_get_no_kl(sigma2, weighting):
    sigma2 = torch.tensor(sigma2)
    token_kl = torch.rand(len(sigma2), 5, generator=torch.Generator().manual_seed(0)) + 0.1
    penalty = variance_weighted_kl_penalty(token_kl, kl_weight(sigma2, weighting).kl_weight)
    assert torch.all(penalty[sigma2 == 0] == 0)
    assert torch.all(penalty[sigma2 > 0] > 0)


@settings(max_examples=60, deadline=None)
@given(variances, st.floats(0.01, 100.0), st.sampled_from(["std", "variance"]))
def test_scaling_the_variance_changes_nothing_when_normalized(sigma2, scale, weighting):
    sigma2 = torch.tensor(sigma2, dtype=torch.float64)
    base = kl_weight(sigma2, weighting, normalize=True).kl_weight
    scaled = kl_weight(sigma2 * scale, weighting, normalize=True).kl_weight
    torch.testing.assert_close(base, scaled, rtol=1e-4, atol=1e-6)


@settings(max_examples=30, deadline=None)
@given(st.floats(0.01, 100.0), st.integers(1, 12), st.sampled_from(["std", "variance"]))
def test_constant_variance_normalized_is_unit_weight(value, batch, weighting):
    weights = kl_weight(torch.full((batch,), value), weighting, normalize=True).kl_weight
    torch.testing.assert_close(weights, torch.ones(batch))


def test_ensemble_variance_is_the_unbiased_sample_variance():
    members = torch.tensor([[1.0, 2.0, 3.0, 6.0], [0.5, 0.5, 0.5, 0.5]])
    mean = 3.0
    expected = sum((x - mean) ** 2 for x in [1.0, 2.0, 3.0, 6.0]) / 3
    torch.testing.assert_close(ensemble_reward_variance(members), torch.tensor([expected, 0.0]))
    with pytest.raises(ValueError, match="an ensemble of 1 member"):
        ensemble_reward_variance(members[:, :1])


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ([0.1, float("nan"), 0.2], r"1 NaN/inf value\(s\) \(first: sample 1\)"),
        ([0.1, 0.2, float("inf")], r"NaN/inf value\(s\) \(first: sample 2\)"),
        ([0.1, -0.5], r"negative value\(s\) \(first: sample 1 = -0.5\)"),
        ([0.0, 0.0, 0.0], "0 for every sample"),
    ],
)
def test_bad_variance_is_rejected_with_the_fix(values, message):
    with pytest.raises(ValueError, match=message) as error:
        check_reward_variance(torch.tensor(values))
    assert "reward_variance" in str(error.value)


def test_bad_weighting_and_config_keys():
    with pytest.raises(ValueError, match="unknown KL weighting 'sigma'"):
        kl_weight(torch.ones(2), "sigma")
    with pytest.raises(ValueError, match=r"variance_kl.weighting='sigma' is unknown; valid: \['std', 'variance'\]"):
        VarianceKLConfig(weighting="sigma")
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['weigthing'\] in variance_kl; valid keys"):
        VarianceKLConfig.from_trainer_config({"variance_kl": {"weigthing": "std"}})
    with pytest.raises(ValueError, match="not a verl KL estimator"):
        VarianceKLConfig(kl_estimator="full")
    with pytest.raises(ValueError, match="max_weight=0.1 is below min_weight=0.5"):
        VarianceKLConfig(min_weight=0.5, max_weight=0.1)
    assert VarianceKLConfig.from_trainer_config({}).weighting == "std"
    assert math.isclose(VarianceKLConfig(kl_estimator="k3+").min_weight, 0.0)


def test_penalty_to_go_is_the_reverse_cumulative_sum_on_the_response():
    penalty = torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.5, 0.5, 9.0, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 0.0, 0.0]])
    expected = torch.tensor([[10.0, 9.0, 7.0, 4.0], [1.0, 0.5, 0.0, 0.0]])
    torch.testing.assert_close(kl_penalty_to_go(penalty, mask), expected)
