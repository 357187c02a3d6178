"""Corpora, tokenizer and batches on the real files."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from harness.data.batches import get_batch
from harness.data.corpora import CATALOG, DataConfig, DataError, load_corpus, locate_catalog_file, read_text
from harness.data.tokenizers.base import UnknownCharacterError
from harness.data.tokenizers.char import EXTRA_CHARS, CharTokenizer

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["tinyshakespeare", "korean-chatbot"])
def test_catalog_files_verify_and_round_trip(data_dir, name):
    path = locate_catalog_file(name, data_dir)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == CATALOG[name].sha256
    text = read_text(DataConfig(name), data_dir)
    tokenizer = CharTokenizer.from_text(text)
    assert tokenizer.decode(tokenizer.encode(text)) == text
    assert set(EXTRA_CHARS) <= set(tokenizer.chars)
    assert list(tokenizer.chars) == sorted(tokenizer.chars)


def test_shakespeare_vocabulary_counted_by_hand(data_dir):
    # Tiny Shakespeare has 65 characters (the lecture's vocab_size): 52 letters, newline, space and
    # ! $ & ' , - . 3 : ; ?. The write-up's tokenizer adds the 9 other digits and the 22 other ASCII
    # punctuation marks: 96. data.extra_chars: false is the lecture's 65.
    assert load_corpus(DataConfig("tinyshakespeare"), data_dir).tokenizer.vocab_size == 96
    lecture = load_corpus(DataConfig("tinyshakespeare", extra_chars=False), data_dir)
    assert lecture.tokenizer.vocab_size == 65
    assert lecture.tokenizer.chars[:13] == "\n !$&',-.3:;?"
    assert len(lecture.train) + len(lecture.val) == 1115394
    assert len(lecture.train) == 1003854  # split by position: int(0.9 * 1115394)


def test_korean_split_shuffles_whole_rows_so_val_holds_every_topic(data_dir):
    """ChatbotData.csv is sorted by label: its last 1,183 rows are all label 2. The default split shuffles
    whole (Q, A) rows with a fixed seed, so val holds all three topics and train and val share no row."""
    import csv

    rows = list(csv.DictReader(open(data_dir / "ChatbotData.csv", encoding="utf-8")))
    assert {r["label"].strip() for r in rows[-1183:]} == {"2"}, "the file is sorted by topic"
    corpus = load_corpus(DataConfig("korean-chatbot"), data_dir)
    assert DataConfig("korean-chatbot").resolved().split == "shuffled-rows"
    val_text = corpus.tokenizer.decode(corpus.val.tolist())
    val_pairs = set(zip(val_text.split("\n")[::2], val_text.split("\n")[1::2], strict=False))
    labels = {r["label"].strip() for r in rows if (r["Q"], r["A"]) in val_pairs}
    assert labels == {"0", "1", "2"}
    assert len(val_pairs) >= 1183 - 5  # 10% of 11,823 rows (a few Q/A pairs repeat)
    again = load_corpus.__wrapped__(DataConfig("korean-chatbot"), data_dir)
    assert torch.equal(again.val, corpus.val), "the same split every time"
    by_position = load_corpus(DataConfig("korean-chatbot", split="position"), data_dir)
    assert not torch.equal(by_position.val[:1000], corpus.val[:1000])


def test_korean_text_is_q_then_a_per_row(data_dir):
    text = read_text(DataConfig("korean-chatbot"), data_dir)
    lines = text.split("\n")
    assert lines[0] == "12시 땡!" and lines[1] == "하루가 또 가네요."
    assert len(lines) == 2 * 11823
    assert 1200 < CharTokenizer.from_text(text).vocab_size < 1300


def test_korean_vocabulary_is_the_csvs_distinct_characters(data_dir):
    # Counted with the csv module alone: the distinct characters of every Q and A, plus the newline between
    # them, are 1,243 (the README's figure); the write-up's extra characters add 22 more that the CSV lacks.
    assert load_corpus(DataConfig("korean-chatbot", extra_chars=False), data_dir).tokenizer.vocab_size == 1243
    assert load_corpus(DataConfig("korean-chatbot"), data_dir).tokenizer.vocab_size == 1265


def test_cp949_file_round_trips_and_utf8_misread_is_named(tmp_path):
    text = "안녕하세요, 세계!\n한국어 텍스트 123.\n"
    path = tmp_path / "ko.txt"
    path.write_bytes(text.encode("cp949"))
    config = DataConfig(path=str(path), encoding="cp949").resolved()
    corpus = load_corpus(config, None)
    assert corpus.tokenizer.decode(torch.cat([corpus.train, corpus.val]).tolist()) == text
    with pytest.raises(DataError, match=r"not valid utf-8.*data.encoding.*cp949"):
        read_text(DataConfig(path=str(path)).resolved(), None)


def test_prompt_character_outside_vocabulary_is_named():
    tokenizer = CharTokenizer.from_text("abc")
    with pytest.raises(UnknownCharacterError, match=r"'한' \(U\+D55C\)"):
        tokenizer.encode("a한")


def test_missing_and_corrupt_files_say_where_to_put_them(tmp_path, data_dir):
    with pytest.raises(
        DataError, match=r"ChatbotData.csv not found.*Download https://raw.githubusercontent.com/songys"
    ):
        locate_catalog_file("korean-chatbot", tmp_path)
    corrupt = tmp_path / "tinyshakespeare.txt"
    shutil.copy(locate_catalog_file("tinyshakespeare", data_dir), corrupt)
    with open(corrupt, "a") as f:
        f.write("x")
    with pytest.raises(DataError, match=r"has sha256 .* expected 86c4e6aa"):
        locate_catalog_file("tinyshakespeare", tmp_path)
    with pytest.raises(DataError, match="data.path: file not found"):
        read_text(DataConfig(path=str(tmp_path / "none.txt")).resolved(), None)


def test_download_failure_says_where_to_put_the_file(tmp_path, monkeypatch):
    import harness.data.corpora as data

    def refuse(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(data.urllib.request, "urlopen", refuse)
    with pytest.raises(DataError, match=r"could not download .*network unreachable.*--data-dir") as raised:
        locate_catalog_file("tinyshakespeare", None)
    assert raised.value.__suppress_context__  # a traceback shows the message, not the failed connection's chain


OFFLINE_PLUGIN = """
import socket, urllib.request

def refuse(*args, **kwargs):
    raise urllib.request.URLError(socket.gaierror(-2, "Name or service not known"))

urllib.request.urlopen = refuse
"""


def test_offline_without_a_data_folder_the_tests_say_where_to_put_the_corpora(tmp_path):
    """A clone with no data folder beside it, no HARNESS_DATA_DIR and no network: the tests that read the corpora
    end with the harness's own message, not with the socket.gaierror of the failed download."""
    project = tmp_path / "clone"
    (project / "tests").mkdir(parents=True)
    for name in ("conftest.py", "servers.py", "subprocesses.py", "test_data.py"):  # conftest and what it imports
        shutil.copy(Path(__file__).with_name(name), project / "tests" / name)
    (tmp_path / "offline.py").write_text(OFFLINE_PLUGIN, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k not in ("HARNESS_DATA_DIR", "PYTEST_XDIST_WORKER")}
    env.update(XDG_CACHE_HOME=str(tmp_path / "cache"), PYTHONPATH=os.pathsep.join([str(tmp_path), str(ROOT)]))
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "offline", "-p", "no:cacheprovider", "-k", "round_trip", "tests"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = done.stdout + done.stderr
    assert done.returncode == 1, out
    assert "2 errors" in out, out
    # Each error's section holds the message; on CI (CI=true) pytest's short summary repeats it untruncated too.
    assert out.count("_ ERROR at setup of test_catalog_files_verify_and_round_trip") == 2, out
    assert out.count("these tests read the real corpora. dataset 'tinyshakespeare': could not download") in (2, 4), out
    assert "gaierror" not in out and "Traceback" not in out, out


@pytest.mark.parametrize("name", ["tinyshakespeare", "korean-chatbot"])
def test_batches_equal_the_write_up_list_comprehension(data_dir, name):
    data = load_corpus(DataConfig(name), data_dir).train
    block_size, batch_size = 128, 32
    x, y = get_batch(data, batch_size, block_size, torch.Generator().manual_seed(3))
    ix = torch.randint(len(data) - block_size, (batch_size,), generator=torch.Generator().manual_seed(3))
    assert torch.equal(x, torch.stack([data[i : i + block_size] for i in ix]))
    assert torch.equal(y, torch.stack([data[i + 1 : i + block_size + 1] for i in ix]))
