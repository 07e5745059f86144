"""Frozen-backbone forward passes: the last-token features the ``score`` heads read, and full rewards.

A Hugging Face sequence classifier computes ``score(h_T)`` where h_T is the final hidden state of the
last non-pad token. With the backbone frozen (stage 2), h_T never changes, so it is computed once and
the heads are trained on the cached (N, H) features.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch


def backbone_of(model: torch.nn.Module) -> torch.nn.Module:
    """The transformer body of a sequence classifier (``model.model``, ``model.transformer``, ...), or ``model``."""
    body = getattr(model, getattr(model, "base_model_prefix", "") or "_no_body", None)
    return body if isinstance(body, torch.nn.Module) else model


def score_layer_of(model: torch.nn.Module) -> torch.nn.Linear:
    score = getattr(model, "score", None)
    if not isinstance(score, torch.nn.Linear):
        raise ValueError(
            f"{type(model).__name__} has no linear 'score' head: load the reward model with "
            "AutoModelForSequenceClassification.from_pretrained(path, num_labels=K)"
        )
    return score


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position of the last attended token of each row, for left or right padding.

    Args:
        attention_mask: (N, L) 1 for tokens, 0 for padding.

    Returns:
        (N,) long indices.
    """
    mask = attention_mask.to(torch.long)
    empty = mask.sum(dim=1) == 0
    if empty.any():
        raise ValueError(f"row {int(empty.nonzero()[0])} of attention_mask has no token")
    positions = torch.arange(mask.shape[1], device=mask.device)
    return (positions * mask).argmax(dim=1)


def _check_pooling(model: torch.nn.Module, input_ids: torch.Tensor, last: torch.Tensor) -> None:
    """The classifier pools the rightmost token != pad_token_id; make sure that is the last attended token."""
    pad_id = getattr(model.config, "pad_token_id", None)
    if pad_id is None:
        raise ValueError(
            "model.config.pad_token_id is None, so the sequence classifier cannot find the last token of a "
            "padded batch: set model.config.pad_token_id = tokenizer.pad_token_id"
        )
    ends_with_pad = input_ids.gather(1, last[:, None]).squeeze(1) == pad_id
    if ends_with_pad.any():
        raise ValueError(
            f"sequence {int(ends_with_pad.nonzero()[0])} ends with the pad token (id {pad_id}) inside its attention "
            "mask, so the classifier would score an earlier token: use a pad token distinct from eos "
            "(tokenizer.add_special_tokens({'pad_token': '<pad>'}))"
        )


def _batches(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, batch_size: int, device: torch.device
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    if input_ids.shape != attention_mask.shape or input_ids.dim() != 2:
        raise ValueError(
            f"input_ids {tuple(input_ids.shape)} and attention_mask {tuple(attention_mask.shape)} must both be (N, L)"
        )
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for start in range(0, input_ids.shape[0], batch_size):
        ids, mask = trim_padding(input_ids[start : start + batch_size], attention_mask[start : start + batch_size])
        yield ids.to(device), mask.to(device)


def trim_padding(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop the trailing columns that are padding in every row (causal models give the same outputs).

    Leading all-pad columns are kept: removing them would shift the positions of left-padded rows.
    """
    used = attention_mask.any(dim=0).nonzero()
    width = int(used.max()) + 1 if used.numel() else attention_mask.shape[1]
    return input_ids[:, :width], attention_mask[:, :width]


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def last_token_features(
    model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, batch_size: int = 32
) -> torch.Tensor:
    """h_T: the final hidden state of each sequence's last non-pad token, exactly what ``model.score`` sees.

    Args:
        model: a sequence classifier (its body ``getattr(model, model.base_model_prefix)`` is run) or the body.
        input_ids: (N, L) token ids, left- or right-padded.
        attention_mask: (N, L) 1 for tokens, 0 for padding.
        batch_size: sequences per forward pass.

    Returns:
        (N, H) features on the CPU, in the model's dtype.
    """
    body, was_training = backbone_of(model), model.training
    model.eval()
    out = []
    try:
        for ids, mask in _batches(input_ids, attention_mask, batch_size, _device(model)):
            last = last_token_index(mask)
            if body is not model:
                _check_pooling(model, ids, last)
            hidden = body(input_ids=ids, attention_mask=mask).last_hidden_state
            out.append(hidden[torch.arange(hidden.shape[0], device=hidden.device), last].cpu())
    finally:
        model.train(was_training)
    if not out:
        return torch.zeros(0, model.config.hidden_size)
    return torch.cat(out)


@torch.no_grad()
def head_rewards(
    model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, batch_size: int = 32
) -> torch.Tensor:
    """r_k(x, y) for every head k: the classifier's logits from a full forward pass, batched.

    Args:
        model: ``AutoModelForSequenceClassification`` with K = ``num_labels`` heads.
        input_ids: (N, L) token ids, left- or right-padded.
        attention_mask: (N, L) 1 for tokens, 0 for padding.

    Returns:
        (N, K) float32 rewards on the CPU.
    """
    was_training = model.training
    model.eval()
    out = []
    try:
        for ids, mask in _batches(input_ids, attention_mask, batch_size, _device(model)):
            _check_pooling(model, ids, last_token_index(mask))
            out.append(model(input_ids=ids, attention_mask=mask).logits.float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, model.config.num_labels)
