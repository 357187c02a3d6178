"""Tracking: the MLflow store (at the bottom), claims and heartbeats, checkpoint stores, run names, and the
recorded run that trains a variant into its MLflow run.

The public names of the modules below, so that ``from harness.tracking import X`` works; inside the
harness, modules import from the module that defines a name.
"""

from __future__ import annotations

from harness.tracking.checkpoints import (  # noqa: F401
    ARTIFACT_DIR,
    ARTIFACT_NAME,
    STORES,
    LocalCheckpoints,
    MlflowCheckpoints,
    checkpoint_store,
)
from harness.tracking.claims import (  # noqa: F401
    CLAIM_ATTEMPTS,
    CLAIM_TAG,
    DRIVER_TAG,
    HEARTBEAT_TAG,
    NOTE_TAG,
    OWNER_PROC_TAG,
    OWNER_TAG,
    RESUMED_FROM_SWEEP_TAG,
    SWEEP_TAG,
    Claim,
    Heartbeat,
    claim_variant,
    close_lost_run,
    close_run,
    close_stale_parents,
    describe_owner,
    existing_runs,
    heartbeat_age_s,
    heartbeat_interval_s,
    is_live,
    open_store,
    owner_gone,
    owner_tags,
    stale_after_s,
    variant_hashes,
    variant_runs,
)
from harness.tracking.naming import (  # noqa: F401
    DISTINCT_CHARS,
    LABELS,
    MIN_WORD,
    WORDS,
    run_name,
    run_names,
    token,
)
from harness.tracking.recorded import (  # noqa: F401
    GRAPHS_TAG,
    SEEDED_BUILD,
    STACKED_TAG,
    SYSTEM_METRICS_INTERVAL_S,
    VariantResult,
    dataset_inputs,
    dataset_name,
    note,
    run_stacked,
    run_unit,
    run_variant,
    start_system_metrics,
    stop_system_metrics,
    tqdm_write,
    wrap,
)
from harness.tracking.store import (  # noqa: F401
    DATASET_RACE,
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    FLUSH_SECONDS,
    LOST_WRITE_RACES,
    METRICS_PER_BATCH,
    PARENT_TAG,
    SAMPLES_TABLE,
    WRAP_COLUMNS,
    BufferedMetrics,
    TrackingError,
    check_tracking_reachable,
    default_artifact_location,
    experiment_id_for,
    git_commit,
    log_dataset_inputs,
    retrying,
    runs_url,
    source_tags,
    tracking_uri,
)
