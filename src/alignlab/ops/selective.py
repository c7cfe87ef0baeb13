"""log p(token) for the tokens that matter, without a full-size log-softmax.

The vocabulary axis is the memory hog of every alignment objective: a `[B, T, V]` float32
log-softmax for B=8, T=2048 and a 150k vocabulary is ~10 GB. Objectives only need one entry per
position, so `selective_log_softmax` computes log p(token) = logit(token) - logsumexp(logits) in
chunks of rows and never holds a full-size log-softmax copy.
"""

from __future__ import annotations

import torch
from torch import Tensor

# How many logits one chunk may hold. Bounds the temporaries (logsumexp's exp buffer, or the
# float32 upcast of bf16 logits) at ~64 MiB in float32 however long the batch is.
CHUNK_ELEMENTS = 1 << 24


def selective_log_softmax(logits: Tensor, index: Tensor, temperature: float = 1.0) -> Tensor:
    """log softmax(logits / temperature)[..., index] for every leading position, without a full
    log-softmax.

    logits: `[..., V]`; index: `[...]` (integer token ids). Returns `[...]` in float32, or float64
    when the logits are float64. float32/float64 logits are handled as gathered logit minus
    logsumexp; bf16/fp16 logits are upcast to float32 one chunk of rows at a time and passed
    through log_softmax there, because logsumexp in half precision loses too much. The temperature
    divides one chunk at a time, so no full-size copy is made.
    """
    if not logits.is_floating_point():
        raise TypeError(f"logits must be floating point, got {logits.dtype}")
    if index.shape != logits.shape[:-1]:
        raise ValueError(
            f"index shape {tuple(index.shape)} must equal the logits' leading shape "
            f"{tuple(logits.shape[:-1])}"
        )
    index = index.long()  # gather needs int64; a no-op when it already is
    vocab = logits.shape[-1]
    try:
        rows = logits.view(-1, vocab)
    except RuntimeError:
        # A strided view such as logits[:, :-1] cannot be flattened without a copy; walk the
        # first axis instead, where each slice can.
        return torch.stack(
            [selective_log_softmax(logits[i], index[i], temperature) for i in range(len(logits))]
        )
    flat_index = index.reshape(-1)
    rows_per_chunk = max(1, CHUNK_ELEMENTS // max(1, vocab))
    high_precision = logits.dtype in (torch.float32, torch.float64)
    pieces = []
    for chunk, chunk_index in zip(rows.split(rows_per_chunk), flat_index.split(rows_per_chunk)):
        chunk_index = chunk_index.unsqueeze(-1)
        if high_precision:
            if temperature != 1.0:
                chunk = chunk / temperature
            picked = chunk.gather(-1, chunk_index).squeeze(-1)
            pieces.append(picked - torch.logsumexp(chunk, dim=-1))
        else:
            chunk = chunk.float()
            if temperature != 1.0:
                chunk = chunk / temperature
            pieces.append(torch.log_softmax(chunk, dim=-1).gather(-1, chunk_index).squeeze(-1))
    if not pieces:  # zero rows: split() yields nothing on some versions
        out_dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
        return logits.new_zeros(index.shape, dtype=out_dtype)
    return torch.cat(pieces).view(index.shape)
