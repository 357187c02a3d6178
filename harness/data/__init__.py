"""Data: corpora (catalog, reading, split), tokenizers, and the write-up's ``get_batch``.

The public names of the modules below, so that ``from harness.data import X`` works; inside the
harness, modules import from the module that defines a name.
"""

from __future__ import annotations

from harness.data.batches import (  # noqa: F401
    get_batch,
)
from harness.data.corpora import (  # noqa: F401
    CATALOG,
    DATASET_CHOICES,
    FILE_DATASET,
    SPLIT_CHOICES,
    SPLIT_SEED,
    CatalogEntry,
    Corpus,
    DataConfig,
    DataError,
    content_sha256,
    default_cache_dir,
    load_corpus,
    locate_catalog_file,
    read_rows,
    read_text,
    resolve_data_dir,
    sha256_of,
)
