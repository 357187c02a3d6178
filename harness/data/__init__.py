"""Data: corpora (catalog, reading, split), tokenizers, and the write-up's ``get_batch``."""

from __future__ import annotations

from harness.exports import lazy_exports

_MODULES = {
    "corpora": (
        "DataError",
        "CatalogEntry",
        "CATALOG",
        "SPLIT_CHOICES",
        "SPLIT_SEED",
        "FILE_DATASET",
        "DATASET_CHOICES",
        "DataConfig",
        "default_cache_dir",
        "resolve_data_dir",
        "sha256_of",
        "locate_catalog_file",
        "content_sha256",
        "read_rows",
        "read_text",
        "Corpus",
        "load_corpus",
    ),
    "batches": ("get_batch",),
}
__getattr__, __all__ = lazy_exports(__name__, _MODULES)
