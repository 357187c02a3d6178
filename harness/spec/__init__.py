"""Specs: one YAML file -> validated, typed variants with a stable identity (read, check, expand, hash, schema).

The public names of the modules below, so that ``from harness.spec import X`` works; inside the
harness, modules import from the module that defines a name.
"""

from __future__ import annotations

from harness.spec.expansion import (  # noqa: F401
    expand,
    parse_overrides,
    variant_id,
    with_seeds,
)
from harness.spec.identity import (  # noqa: F401
    RunConfig,
)
from harness.spec.keys import (  # noqa: F401
    AXIS_NAME_PATTERN,
    CHOICES,
    IDENTITY_VERSION,
    NAME_PATTERN,
    REFERENCE_KEYS,
    REFERENCE_METRICS,
    SECTIONS,
    SEED_KEY,
    TOP_LEVEL_KEYS,
    V1_DEFAULTS,
    V1_KEYS,
    V1_MODEL_KINDS,
    all_dotted_keys,
    check_dotted_key,
    config_field,
    default_of,
    is_identity,
    key_problem,
    type_value,
)
from harness.spec.parsing import (  # noqa: F401
    load_spec,
)
from harness.spec.problems import (  # noqa: F401
    SpecError,
    suggest,
)
from harness.spec.records import (  # noqa: F401
    Problems,
    Reference,
    Spec,
    Variant,
)
from harness.spec.schema import (  # noqa: F401
    SCHEMA_PATH,
    json_schema,
    schema_text,
    write_schema,
)
