"""The resolved config of one variant and its identity: ``RunConfig.config_hash`` hashes what changed the math."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

import yaml

from harness.data.corpora import CATALOG, FILE_DATASET, DataConfig, content_sha256
from harness.models import ModelConfig
from harness.spec.keys import SECTIONS, V1_DEFAULTS, V1_KEYS, V1_MODEL_KINDS, config_field, default_of, type_value
from harness.train.config import SampleConfig, TrainConfig


@dataclass(frozen=True)
class RunConfig:
    """The full resolved config of one variant: what gets recorded, and (its identity part) hashed.

    ``data_sha256`` is the sha256 of the data's bytes, filled by ``expand``; when None, ``config_hash``
    reads the file itself (catalog corpora are known by their catalog sha256 and need no file).
    """

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    data_sha256: str | None = None

    def flat(self) -> dict[str, Any]:
        """``{'model.kind': 'bigram', ...}``; tuples become lists."""
        out = {}
        for section in SECTIONS:
            for key, value in asdict(getattr(self, section)).items():
                out[f"{section}.{key}"] = list(value) if isinstance(value, tuple) else value
        return out

    def nested(self) -> dict[str, dict[str, Any]]:
        nested: dict[str, dict[str, Any]] = {}
        for key, value in self.flat().items():
            section, name = key.split(".")
            nested.setdefault(section, {})[name] = value
        return nested

    def data_content_sha256(self) -> str:
        if self.data_sha256 is not None:
            return self.data_sha256
        data = self.data.resolved()
        if data.dataset in CATALOG:
            return CATALOG[data.dataset].sha256  # verified against the file whenever it is loaded
        return content_sha256(data, None)

    def identity(self) -> dict[str, Any]:
        """What the hash covers (see the module docstring); ``data.path`` becomes ``data.sha256``."""
        out: dict[str, Any] = {}
        data = self.data.resolved()
        for key, value in {**self.flat(), **{f"data.{k}": v for k, v in asdict(data).items()}}.items():
            meta = config_field(key).metadata
            if not meta.get("identity", True):
                continue
            if "kinds" in meta and self.model.kind not in meta["kinds"]:
                continue
            typed, problem = type_value(key, value)
            value = value if problem else typed  # 1 and 1.0 hash the same for a number field
            if meta.get("since", 1) > 1 and value == default_of(key):
                continue
            if key == "data.path":
                key, value = "data.sha256", self.data_content_sha256()
            out[key] = list(value) if isinstance(value, tuple) else value
        return out

    def config_hash(self) -> str:
        """Identity of a variant for resume and for the `config_hash` tag: same hash, same training."""
        canonical = json.dumps(self.identity(), sort_keys=True, default=str)
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def legacy_hash(self) -> str | None:
        """The version-1 hash (the flat config as written, execution keys included), for runs recorded before
        version 2; None when no version-1 run could have trained this config (a later key off its default,
        a GPT, or a split other than the position split that version 1 always used)."""
        if self.model.kind not in V1_MODEL_KINDS or self.data.resolved().split != "position":
            return None
        flat = self.flat()
        for key, value in flat.items():
            meta = config_field(key).metadata
            if "kinds" in meta and self.model.kind not in meta["kinds"]:
                continue  # e.g. a GPT size in the base of a spec whose bigram rung this is
            if meta.get("since", 1) > 1 and key != "data.split" and value != _plain(default_of(key)):
                return None
        flat.update(V1_DEFAULTS)
        if self.train.eval_interval is not None:
            flat["train.eval_interval"] = self.train.eval_interval
        flat["data.dataset"] = (
            FILE_DATASET if self.data.dataset is None and self.data.path is not None else self.data.dataset
        )
        v1 = {key: flat[key] for key in V1_KEYS}
        return hashlib.sha256(json.dumps(v1, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.nested(), sort_keys=False, allow_unicode=True)


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value
