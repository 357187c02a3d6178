"""The interface every model implements: ``forward`` as in the write-up, ``generate``, and the fast path.

Every concrete model declares what it reads. The bigram and FFN models read only the current token, so they
declare ``position_wise = True``: the training loop then computes logits once per distinct token instead of
once per position (see harness.train.scoring). The GPT looks back up to ``context_length`` tokens and declares
False. There is no default: a model that forgot the flag would silently get context-free losses.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class CharLanguageModel(nn.Module):
    """Shared interface: ``forward`` as in the write-up, ``generate``, and for position-wise models the fast path.

    Every concrete subclass declares ``position_wise: bool`` (True: logits at a position depend on the token
    there only, so ``logits_for_tokens``/``logits_table`` give them all; False: they depend on the context).
    """

    position_wise: bool  # no default, on purpose: checked when a model is built

    def __init__(self, context_length: int):
        super().__init__()
        declared = getattr(type(self), "position_wise", None)
        if not isinstance(declared, bool):
            got = "does not declare position_wise" if declared is None else f"declares position_wise = {declared!r}"
            raise TypeError(
                f"{type(self).__name__} {got}: set the class attribute position_wise = True if its logits "
                f"at a position read only the token there, else False"
            )
        self.context_length = context_length

    def logits_for_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Next-token logits for each token in ``tokens`` (shape ``tokens.shape + (vocab,)``)."""
        raise NotImplementedError

    def logits_table(self) -> torch.Tensor:
        """Next-token logits after every token of the vocabulary: (vocab, vocab)."""
        table = self.token_embedding_table.weight
        return self.logits_for_tokens(torch.arange(table.shape[0], device=table.device))

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        logits = self.logits_for_tokens(idx)
        if targets is None:
            return logits, None
        B, T, V = logits.shape
        loss = F.cross_entropy(logits.reshape(B * T, V), targets.reshape(B * T))
        return logits, loss

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        generator: torch.Generator | None = None,
        temperature: float = 1.0,
        top_k: int | None = None,
    ):
        """Append ``max_new_tokens`` tokens sampled from the softmax, one at a time (multinomial).

        As nanoGPT's ``generate``: the last logits are divided by ``temperature`` and, with ``top_k``, all but
        the ``top_k`` largest are dropped. At temperature 1 and no top-k the logits are used as they are, so
        the draws are exactly those of the plain softmax. The model sees at most what it was built for: the
        last ``context_length`` tokens (the last one for a position-wise model), so prompts of any length work.
        """
        keep = 1 if self.position_wise else self.context_length
        for _ in range(max_new_tokens):
            logits, _ = self(idx[:, -keep:])
            logits = logits[:, -1, :].float()
            if temperature != 1.0:
                logits = logits / temperature
            if top_k is not None and top_k < logits.size(-1):
                kth = torch.topk(logits, top_k).values[:, [-1]]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            probs = F.softmax(logits, dim=-1)
            idx_next = torch.multinomial(probs, num_samples=1, generator=generator)
            idx = torch.cat((idx, idx_next), dim=1)
        return idx
