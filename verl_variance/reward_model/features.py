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


def _check_shapes(input_ids: torch.Tensor, attention_mask: torch.Tensor, batch_size: int) -> None:
    if input_ids.shape != attention_mask.shape or input_ids.dim() != 2:
        raise ValueError(
            f"input_ids {tuple(input_ids.shape)} and attention_mask {tuple(attention_mask.shape)} must both be (N, L)"
        )
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")


def _batches(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, batch_size: int, device: torch.device
) -> Iterator[tuple[list[int], torch.Tensor, torch.Tensor]]:
    """Consecutive batches padded to their longest. Yields (the indices of the batch's sequences, ids, mask)."""
    _check_shapes(input_ids, attention_mask, batch_size)
    for start in range(0, input_ids.shape[0], batch_size):
        ids, mask = trim_padding(input_ids[start : start + batch_size], attention_mask[start : start + batch_size])
        yield list(range(start, start + ids.shape[0])), ids.to(device), mask.to(device)


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
        for _, ids, mask in _batches(input_ids, attention_mask, batch_size, _device(model)):
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


MIN_WIDTH = 32
"""Narrowest width of a fixed-shape chunk (``padded_width``)."""


def padded_width(length: int, maximum: int, minimum: int = MIN_WIDTH) -> int:
    """The fixed width a sequence of ``length`` tokens is padded to: the next power of two >= ``minimum``,
    capped at ``maximum``; a sequence longer than ``maximum`` keeps its own length.

    A row's outputs change in the last bits with the width of its batch (CPU matrix kernels pick their path
    by shape); padding to a width that depends on the row's own length alone removes that dependence."""
    width = minimum
    while width < length:
        width *= 2
    return length if length > maximum else min(width, max(maximum, length))


def _fixed_shape_chunks(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, rows: int, pad_token_id: int, max_length: int
) -> Iterator[tuple[list[int], torch.Tensor, torch.Tensor]]:
    """Chunks of exactly ``rows`` x ``padded_width`` tokens, right-padded (whatever the input's padding); missing
    rows are padding rows that see one token. Yields (the indices of the chunk's sequences, ids, mask)."""
    _check_shapes(input_ids, attention_mask, rows)
    tokens = [ids[mask.bool()] for ids, mask in zip(input_ids, attention_mask, strict=True)]
    groups: dict[int, list[int]] = {}
    for index, sequence in enumerate(tokens):
        groups.setdefault(padded_width(len(sequence), max_length), []).append(index)
    for width, indices in sorted(groups.items()):
        for start in range(0, len(indices), rows):
            chunk = indices[start : start + rows]
            ids = torch.full((rows, width), pad_token_id, dtype=torch.long)
            mask = torch.zeros((rows, width), dtype=torch.long)
            mask[len(chunk) :, 0] = 1
            for row, index in enumerate(chunk):
                ids[row, : len(tokens[index])] = tokens[index]
                mask[row, : len(tokens[index])] = 1
            yield chunk, ids, mask


@torch.no_grad()
def head_rewards(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    batch_size: int = 32,
    fixed_max_length: int | None = None,
) -> torch.Tensor:
    """r_k(x, y) for every head k: the classifier's logits from a full forward pass, batched.

    Args:
        model: ``AutoModelForSequenceClassification`` with K = ``num_labels`` heads.
        input_ids: (N, L) token ids, left- or right-padded.
        attention_mask: (N, L) 1 for tokens, 0 for padding.
        fixed_max_length: if set, run chunks of exactly ``batch_size`` rows x ``padded_width(length,
            fixed_max_length)`` tokens, so that a sequence's rewards are bit-identical whatever it is scored
            with; None: batches padded to their longest.

    Returns:
        (N, K) float32 rewards on the CPU.
    """
    was_training, device = model.training, _device(model)
    model.eval()
    if fixed_max_length is not None:
        pad_id = getattr(model.config, "pad_token_id", None)  # None: _check_pooling says what to set
        chunks = _fixed_shape_chunks(input_ids, attention_mask, batch_size, pad_id or 0, fixed_max_length)
    else:
        chunks = _batches(input_ids, attention_mask, batch_size, device)
    out = torch.zeros(input_ids.shape[0], model.config.num_labels)
    try:
        for index, ids, mask in chunks:
            _check_pooling(model, ids[: len(index)], last_token_index(mask[: len(index)]))
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            out[index] = logits[: len(index)].float().cpu()
    finally:
        model.train(was_training)
    return out
