"""Specs: one YAML file -> validated, typed variants with a stable identity (read, check, expand, hash, schema)."""

from __future__ import annotations

from harness.exports import lazy_exports

_MODULES = {
    "problems": ("SpecError", "suggest"),
    "keys": (
        "SECTIONS",
        "TOP_LEVEL_KEYS",
        "PRACTICAL_DIFFERENCE",
        "REFERENCE_KEYS",
        "SEED_KEY",
        "IDENTITY_VERSION",
        "NAME_PATTERN",
        "AXIS_NAME_PATTERN",
        "REFERENCE_METRICS",
        "CHOICES",
        "V1_KEYS",
        "V1_DEFAULTS",
        "V1_MODEL_KINDS",
        "all_dotted_keys",
        "config_field",
        "default_of",
        "is_identity",
        "key_problem",
        "check_dotted_key",
        "type_value",
    ),
    "identity": ("RunConfig",),
    "records": ("Variant", "Reference", "Spec", "Problems"),
    "parsing": ("load_spec",),
    "expansion": ("with_seeds", "parse_overrides", "variant_id", "expand"),
    "schema": ("SCHEMA_PATH", "json_schema", "schema_text", "write_schema"),
}
__getattr__, __all__ = lazy_exports(__name__, _MODULES)
