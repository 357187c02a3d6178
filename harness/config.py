"""Field markers shared by the config sections (data, model, train, sample).

Each section is a frozen dataclass owned by its module; its fields carry metadata that the spec
layer reads to decide a variant's identity (see docs/development.md, "Run identity"):

- ``EXECUTION``: changes how a run is executed or observed (threads, device, checkpoints, eval
  cadence, samples), never the math of training. Not hashed.
- ``ADDED_V2``: an identity key added after the first identity scheme. It is hashed only when it
  differs from its default, so runs recorded before it existed keep their identity.
- ``KINDS``: the model kinds a model key applies to; it is an error to set it for another kind, and it
  is not hashed for one.
"""

from __future__ import annotations

from typing import Any

EXECUTION: dict[str, Any] = {"identity": False}
ADDED_V2: dict[str, Any] = {"since": 2}


def applies_to(*kinds: str, since: int = 1) -> dict[str, Any]:
    """Metadata of a model key that only means something for some model kinds."""
    return {"kinds": kinds, "since": since}
