"""Test reward: every odd-indexed prompt is uncertain (variance 1 + index % 3), every even one certain (0)."""


def parity_variance_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs):
    index = int(extra_info["index"])
    return {"score": len(solution_str.split()) / 10, "reward_variance": 0.0 if index % 2 == 0 else 1.0 + index % 3}


def failing_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs):
    """Step 1 (prompts 0-7, unshuffled): a user's reward function (none of verl-variance's code) that fails on every
    odd prompt. From step 2 on: stands in for verl-variance code that fails inside a reward worker after start-up."""
    from verl_variance.integration.compat import VerlVarianceError

    index = int(extra_info["index"])
    if index >= 8:
        raise VerlVarianceError("the reward of this sample cannot be computed (a test of worker errors)")
    if index % 2:
        raise ValueError("a user's reward function failed (a test of stock agent-loop errors)")
    return len(solution_str.split()) / 10
