"""Checkpoint files: save a training state and load it back only if it holds plain, expected values."""

from __future__ import annotations

import os
from pathlib import Path

import torch


class CheckpointError(Exception):
    """A checkpoint that cannot be read or trusted; the message names the file and why."""


CHECKPOINT_KEYS = ("model", "optimizer", "generator", "step", "step_losses", "train_time_s")  # + "generator_step"
_PLAIN = (torch.Tensor, str, int, float, bool, type(None))


def _check_plain(value, where: str) -> None:
    """Tensors and plain containers only: what ``torch.load(weights_only=True)`` reads back."""
    if isinstance(value, dict):
        for key, item in value.items():
            _check_plain(key, f"{where} key")
            _check_plain(item, f"{where}[{key!r}]")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_plain(item, f"{where}[{i}]")
    elif not isinstance(value, _PLAIN):
        raise CheckpointError(f"checkpoint {where} is a {type(value).__name__}: save only tensors and plain containers")


def save_checkpoint(path: str | os.PathLike, state: dict) -> None:
    """Write ``state`` atomically: a reader sees the previous checkpoint or this one, never half of one."""
    _check_plain(state, "state")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Read a checkpoint with ``weights_only=True``: a file holding anything but tensors and plain containers
    (a crafted pickle that would run code, a foreign file) raises ``CheckpointError`` and runs nothing."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)  # load_state_dict moves it to the device
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path}: no such file") from None
    except Exception as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        why = next((line for line in lines if "unsupported" in line.lower()), lines[0] if lines else type(exc).__name__)
        why = why.rstrip(".")
        raise CheckpointError(
            f"checkpoint {path} is not a harness checkpoint (only tensors and plain containers are loaded, "
            f"nothing in it was executed): {why}; delete it to train the variant from the start"
        ) from None
    if not isinstance(saved, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(saved).__name__}, not a dict of trainer state")
    return saved
