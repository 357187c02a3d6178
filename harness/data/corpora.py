"""Corpora: the catalog, reading a file, and the train/val split.

Catalog datasets are downloaded once into a user cache and checked against their sha256;
``HARNESS_DATA_DIR`` (or ``--data-dir``) names a folder that already holds them, for offline use.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import os
import shutil
import tempfile
import urllib.request
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from harness.config import ADDED_V2
from harness.data.tokenizers import (
    BASE_ALPHABET,
    TOKENIZER_CHOICES,
    NotNFCError,
    Tokenizer,
    build_tokenizer,
    tokenizer_cache_dir,
)


class DataError(Exception):
    """A dataset that cannot be read as asked; the message says what to do."""


@dataclass(frozen=True)
class CatalogEntry:
    filename: str
    url: str
    sha256: str
    layout: str  # "text": the file is the corpus; "chatbot-csv": each row's Q then A, one per line
    default_split: str = "position"


CATALOG = {
    "tinyshakespeare": CatalogEntry(
        "tinyshakespeare.txt",
        "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
        "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
        "text",
    ),
    "korean-chatbot": CatalogEntry(
        "ChatbotData.csv",
        "https://raw.githubusercontent.com/songys/Chatbot_data/master/ChatbotData.csv",
        "287eb129695b577321c80ad397bb3c2279164d4ca577874d129fd3db5b30afe2",
        "chatbot-csv",
        # The CSV is sorted by topic label: its last 10% of rows are all label 2, so a split by position
        # would validate on one topic only. Whole (Q, A) rows are shuffled with a fixed seed instead.
        "shuffled-rows",
    ),
}
SPLIT_CHOICES = ("position", "shuffled-rows")
BYTE_LEVEL = ("bytes", "bpe")  # tokenizers that encode any text: extra_chars means nothing to them
SPLIT_SEED = 0  # fixed: every variant and every train.seed sees the same split
FILE_DATASET = "file"
DATASET_CHOICES = (*CATALOG, FILE_DATASET)


@dataclass(frozen=True)
class DataConfig:
    """``dataset`` is a catalog name, or ``file`` with ``path`` (any local text file in ``encoding``)."""

    dataset: str | None = None
    path: str | None = None  # identity is the file's content (sha256), not its path
    encoding: str = "utf-8"
    train_fraction: float = 0.9
    split: str | None = field(default=None, metadata=ADDED_V2)  # position | shuffled-rows; None = the corpus's default
    # The write-up's tokenizer adds digits and ASCII punctuation to the corpus's characters so that any prompt
    # encodes; the lecture's uses the corpus's characters alone (65 for Tiny Shakespeare instead of 96).
    extra_chars: bool = field(default=True, metadata=ADDED_V2)
    # char: one token per character (the write-up's); jamo: Hangul syllables split into their letters (NFD);
    # bpe: a byte-level BPE of vocab_size tokens learnt from the train split only; bytes: UTF-8 bytes.
    tokenizer: str = field(default="char", metadata=ADDED_V2)
    vocab_size: int | None = field(default=None, metadata=ADDED_V2)  # bpe only: 256 bytes + the merges

    def resolved(self) -> DataConfig:
        """``path`` alone means ``dataset: file``; no ``split`` means the corpus's default. ``extra_chars`` means
        nothing to the byte-level tokenizers (they encode every text), so it is reset to its default for them
        and a spec's ``extra_chars: false`` changes no bytes or bpe run's identity."""
        dataset = FILE_DATASET if self.dataset is None and self.path is not None else self.dataset
        split = self.split
        if split is None:
            split = CATALOG[dataset].default_split if dataset in CATALOG else "position"
        extra_chars = True if self.tokenizer in BYTE_LEVEL else self.extra_chars
        return replace(self, dataset=dataset, split=split, extra_chars=extra_chars)

    def problems(self) -> list[tuple[str, str]]:
        found = []
        choices = ", ".join(DATASET_CHOICES)
        if self.dataset is None:
            found.append(("dataset", f"is required; choices: {choices} (file needs data.path)"))
        elif self.dataset not in DATASET_CHOICES:
            found.append(("dataset", f"unknown dataset {self.dataset!r}; choices: {choices}"))
        elif self.dataset == FILE_DATASET and self.path is None:
            found.append(("path", "dataset 'file' needs data.path"))
        elif self.dataset != FILE_DATASET and self.path is not None:
            found.append(("path", f"is only used with dataset: file, not with {self.dataset!r}"))
        try:
            "".encode(self.encoding)
        except LookupError:
            found.append(("encoding", f"unknown encoding {self.encoding!r} (e.g. utf-8, cp949)"))
        if self.split is not None and self.split not in SPLIT_CHOICES:
            found.append(("split", f"unknown split {self.split!r}; choices: {', '.join(SPLIT_CHOICES)}"))
        if not 0.0 < self.train_fraction < 1.0:
            found.append(("train_fraction", f"must be between 0 and 1, got {self.train_fraction}"))
        if self.tokenizer == "bpe" and self.vocab_size is None:
            found.append(("vocab_size", f"tokenizer 'bpe' needs data.vocab_size: {BASE_ALPHABET} bytes + the merges"))
        elif self.tokenizer == "bpe" and self.vocab_size < BASE_ALPHABET:
            found.append(
                (
                    "vocab_size",
                    f"must be at least {BASE_ALPHABET} (the byte-level base alphabet, one token per byte), "
                    f"got {self.vocab_size}",
                )
            )
        elif self.tokenizer in TOKENIZER_CHOICES and self.tokenizer != "bpe" and self.vocab_size is not None:
            found.append(
                (
                    "vocab_size",
                    f"is only for tokenizer 'bpe'; {self.tokenizer!r} takes its vocabulary from the text "
                    "(remove data.vocab_size)",
                )
            )
        return found


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "nanoko-harness" / "data"


def resolve_data_dir(explicit: str | os.PathLike | None = None) -> Path | None:
    """The offline data folder: ``--data-dir``, else ``HARNESS_DATA_DIR``, else None (download)."""
    chosen = explicit or os.environ.get("HARNESS_DATA_DIR")
    return Path(chosen).expanduser().resolve() if chosen else None


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def locate_catalog_file(name: str, data_dir: Path | None) -> Path:
    """The verified local copy of a catalog dataset, downloading it into the cache if needed."""
    entry = CATALOG[name]
    if data_dir is not None:
        path = data_dir / entry.filename
        if not path.is_file():
            raise DataError(
                f"dataset {name!r}: {path} not found. Download {entry.url} and save it there as "
                f"{entry.filename}, or unset HARNESS_DATA_DIR/--data-dir to download it automatically."
            )
    else:
        path = default_cache_dir() / entry.filename
        if not path.is_file():
            _download(name, entry, path)
    actual = sha256_of(path)
    if actual != entry.sha256:
        raise DataError(
            f"dataset {name!r}: {path} has sha256 {actual}, expected {entry.sha256}. "
            f"Delete it and download {entry.url} again (or put the right file there)."
        )
    return path


def _download(name: str, entry: CatalogEntry, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with urllib.request.urlopen(entry.url, timeout=30) as response:
            payload = response.read()
    except OSError as exc:
        raise DataError(
            f"dataset {name!r}: could not download {entry.url} ({exc}). Without network, save that file "
            f"as {path}, or put it in a folder and pass --data-dir FOLDER (or set HARNESS_DATA_DIR)."
        ) from None  # the message holds the cause; its traceback (socket.gaierror, ...) would only bury it
    with tempfile.NamedTemporaryFile(dir=path.parent, delete=False) as tmp:
        tmp.write(payload)
    shutil.move(tmp.name, path)


def _file_path(config: DataConfig, data_dir: Path | None) -> Path:
    """The local file behind a dataset (verified against its sha256 for catalog corpora)."""
    if config.dataset == FILE_DATASET:
        path = Path(config.path).expanduser()
        if not path.is_file():
            where = (
                "" if path.is_absolute() else f" (a relative path is read from the current folder: {path.resolve()})"
            )
            raise DataError(f"data.path: file not found: {path}{where}")
        return path
    return locate_catalog_file(config.dataset, data_dir)


def content_sha256(config: DataConfig, data_dir: Path | None) -> str:
    """What a run's identity records of its data: the sha256 of the file's bytes, not its name or path."""
    if config.dataset in CATALOG:
        locate_catalog_file(config.dataset, data_dir)  # present and verified
        return CATALOG[config.dataset].sha256
    return _sha256_cached(_file_path(config, data_dir))


def _sha256_cached(path: Path) -> str:
    stat = path.stat()
    return _sha256_by_stat(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _sha256_by_stat(path: str, size: int, mtime_ns: int) -> str:
    return sha256_of(Path(path))


def read_rows(config: DataConfig, data_dir: Path | None) -> list[str]:
    """The corpus as rows: a chatbot row is its Q then its A (two lines); a text file's rows are its lines."""
    path = _file_path(config, data_dir)
    encoding = config.encoding if config.dataset == FILE_DATASET else "utf-8"
    try:
        raw = path.read_text(encoding=encoding)
    except UnicodeDecodeError as exc:
        hint = " (Korean files from Windows are often cp949)" if encoding.lower() != "cp949" else ""
        raise DataError(
            f"data.path: {path} is not valid {encoding} at byte {exc.start}; "
            f"set data.encoding to the file's encoding{hint}"
        ) from exc
    if config.dataset in CATALOG and CATALOG[config.dataset].layout == "chatbot-csv":
        return [f"{row['Q']}\n{row['A']}" for row in csv.DictReader(io.StringIO(raw))]
    return raw.split("\n")


def read_text(config: DataConfig, data_dir: Path | None) -> str:
    """The corpus as one string, rows in file order."""
    return "\n".join(read_rows(config, data_dir))


@dataclass(frozen=True)
class Corpus:
    """A corpus tokenized and split; ``train_chars``/``val_chars`` count the characters of each split's text,
    so losses convert to bits per character whatever the tokenizer."""

    tokenizer: Tokenizer
    train: torch.Tensor
    val: torch.Tensor
    train_chars: int
    val_chars: int

    @property
    def chars_per_token(self) -> float:
        """Characters of text per token over the whole corpus (1 for char; about 0.4 for Korean jamo)."""
        return (self.train_chars + self.val_chars) / (len(self.train) + len(self.val))

    def tokens_per_char(self, split: str) -> float:
        ids, chars = (self.train, self.train_chars) if split == "train" else (self.val, self.val_chars)
        return len(ids) / chars


def split_text(config: DataConfig, rows: list[str], text: str) -> tuple[str, str]:
    """The train and val text. ``position`` cuts the text at ``train_fraction`` of its characters (the lecture's
    split, which for one token per character is its cut at that fraction of the tokens); ``shuffled-rows``
    first shuffles whole rows with a fixed seed, then cuts between rows."""
    if config.split == "shuffled-rows":
        order = np.random.default_rng(SPLIT_SEED).permutation(len(rows))
        n_train_rows = int(config.train_fraction * len(rows))
        return "\n".join(rows[i] for i in order[:n_train_rows]), "\n".join(rows[i] for i in order[n_train_rows:])
    n_train = int(config.train_fraction * len(text))  # text: the rows joined by newlines
    return text[:n_train], text[n_train:]


@functools.lru_cache(maxsize=8)
def load_corpus(config: DataConfig, data_dir: Path | None) -> Corpus:
    """Read, split and tokenize: the first ``train_fraction`` trains, the rest validates (``split_text``).

    char and jamo take their vocabulary from the whole text (the write-up's); bpe learns its merges from the train
    split alone, so no val text shapes the vocabulary (every val character still encodes, as bytes).
    """
    config = config.resolved()
    rows = read_rows(config, data_dir)
    text = "\n".join(rows)
    if not text:
        raise DataError(f"dataset {config.dataset!r} is empty")
    train_text, val_text = split_text(config, rows, text)
    try:
        tokenizer = build_tokenizer(
            config.tokenizer,
            train_text,
            text,
            extra_chars=config.extra_chars,
            vocab_size=config.vocab_size,
            cache_dir=tokenizer_cache_dir(),
        )
        train, val = tokenizer.encode_tensor(train_text), tokenizer.encode_tensor(val_text)
    except NotNFCError as exc:
        raise DataError(f"data.tokenizer 'jamo' on dataset {config.dataset!r}: {exc}") from exc
    except ValueError as exc:
        raise DataError(f"data.tokenizer {config.tokenizer!r} on dataset {config.dataset!r}: {exc}") from exc
    return Corpus(tokenizer, train, val, len(train_text), len(val_text))
