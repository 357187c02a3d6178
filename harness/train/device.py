"""Which torch device a run trains on (``train.device``)."""

from __future__ import annotations

import torch


def pick_device(requested: str) -> torch.device:
    """``auto`` means CUDA, then MPS, then CPU; an explicit device that is missing is an error."""
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"train.device is {requested!r} but CUDA is not available here; use auto or cpu")
    if requested == "mps" and not torch.backends.mps.is_available():
        raise RuntimeError("train.device is 'mps' but MPS is not available here; use auto or cpu")
    return torch.device(requested)
