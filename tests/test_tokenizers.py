"""The tokenizers (char, jamo, bytes, bpe), their registry and bits per character, on the real corpora."""

from __future__ import annotations

import hashlib
import math
import string
import unicodedata

import pytest
import tokenizers
import torch
import torch.nn.functional as F

from harness.data.corpora import DataConfig, read_rows
from harness.data.tokenizers import (
    EXTRA_CHARS,
    TOKENIZER_CHOICES,
    TOKENIZERS,
    BPETokenizer,
    ByteTokenizer,
    CharTokenizer,
    JamoTokenizer,
    NotNFCError,
    UnknownCharacterError,
    bits_per_character,
    build_tokenizer,
    chars_per_token,
    has_hangul,
)
from harness.data.tokenizers import bpe as bpe_module
from harness.data.tokenizers.jamo import decompose

CORPORA = ("tinyshakespeare", "korean-chatbot")


@pytest.fixture(scope="module")
def corpus_text(data_dir) -> dict[str, str]:
    """Each corpus as the harness reads it: its rows joined by newlines."""
    return {name: "\n".join(read_rows(DataConfig(name), data_dir)) for name in CORPORA}


@pytest.fixture(scope="module")
def bpe512(corpus_text, tmp_path_factory) -> dict[str, tuple[BPETokenizer, str, str]]:
    """Per corpus: a vocab-512 BPE trained on the first 90% of the text, that train text and the rest."""
    cache_dir = tmp_path_factory.mktemp("bpe-cache")
    trained = {}
    for name, text in corpus_text.items():
        cut = int(0.9 * len(text))
        trained[name] = (BPETokenizer.train(text[:cut], 512, cache_dir), text[:cut], text[cut:])
    return trained


# Round trips on the real corpora


@pytest.mark.parametrize("corpus", CORPORA)
@pytest.mark.parametrize("name", ["char", "jamo", "bytes"])
def test_round_trip_on_the_whole_corpus(corpus_text, corpus, name):
    text = corpus_text[corpus]
    tokenizer = build_tokenizer(name, text, text)
    ids = tokenizer.encode_tensor(text)
    assert ids.dtype == torch.int64 and ids.dim() == 1
    assert 0 <= int(ids.min()) and int(ids.max()) < tokenizer.vocab_size
    assert tokenizer.decode(ids) == text
    assert tokenizer.encode(text[:1000]) == ids[: len(tokenizer.encode(text[:1000]))].tolist()


@pytest.mark.parametrize("corpus", CORPORA)
def test_bpe_round_trips_on_train_and_held_out_text(bpe512, corpus_text, corpus):
    tokenizer, train_text, rest = bpe512[corpus]
    assert tokenizer.vocab_size == 512
    text = corpus_text[corpus]
    ids = tokenizer.encode_tensor(text)
    assert ids.dtype == torch.int64 and ids.dim() == 1
    assert tokenizer.decode(ids) == text
    assert tokenizer.decode(tokenizer.encode_tensor(rest)) == rest
    # encode_tensor encodes chunks in a batch; the ids are those of one call on the whole text
    assert ids.tolist() == tokenizer.hf.encode(text).ids


def test_bpe_chunks_cut_only_where_the_whole_text_encodes_the_same(bpe512):
    tokenizer = bpe512["tinyshakespeare"][0]
    tricky = "a\n\nb \n c\t\n\n\n  d.\n'\n's\nx\u00a0\ny\u3000\n12\n\n\u001c\nz \u2028\n한\n\n 국\n" * 3
    pieces = list(bpe_module.chunks(tricky, size=1))
    assert "".join(pieces) == tricky and len(pieces) > 10
    batched = [i for e in tokenizer.hf.encode_batch(pieces, add_special_tokens=False) for i in e.ids]
    assert batched == tokenizer.hf.encode(tricky).ids
    assert tokenizer.decode(tokenizer.encode(tricky)) == tricky


# char


@pytest.mark.parametrize("corpus", CORPORA)
@pytest.mark.parametrize("extra_chars", [True, False])
def test_char_ids_equal_the_write_ups_list_comprehension(corpus_text, corpus, extra_chars):
    """The write-up's tokenizer as it is written there: sorted characters, a dict, one lookup per character."""
    text = corpus_text[corpus]
    chars = sorted(set(text) | (set(string.digits + string.punctuation + " \n") if extra_chars else set()))
    stoi = {ch: i for i, ch in enumerate(chars)}
    tokenizer = CharTokenizer.from_text(text, extra_chars)
    assert tokenizer.chars == "".join(chars) and tokenizer.vocab_size == len(chars)
    assert tokenizer.encode_tensor(text).tolist() == [stoi[c] for c in text]
    assert tokenizer.decode([3, 1, 4]) == "".join(chars[i] for i in (3, 1, 4))


def test_char_unknown_character_is_named_as_before():
    with pytest.raises(UnknownCharacterError, match=r"character 'z' \(U\+007A\) is not in the vocabulary"):
        CharTokenizer("ab").encode("abz")


# jamo


def test_jamo_decomposes_korean_into_its_eight_jamo():
    # 한 = ᄒ ᅡ ᆫ, 국 = ᄀ ᅮ ᆨ, 어 = ᄋ ᅥ (no trailing consonant)
    expected = [0x1112, 0x1161, 0x11AB, 0x1100, 0x116E, 0x11A8, 0x110B, 0x1165]
    assert [ord(c) for c in decompose("한국어")] == expected
    tokenizer = JamoTokenizer.from_text("한국어", extra_chars=False)
    assert tokenizer.chars == "".join(chr(c) for c in sorted(set(expected)))
    ids = tokenizer.encode("한국어")
    assert [ord(tokenizer.chars[i]) for i in ids] == expected
    assert tokenizer.decode(ids) == "한국어"


def test_jamo_decomposition_is_nfd_for_every_syllable():
    syllables = "".join(chr(c) for c in range(0xAC00, 0xD7A4))
    assert decompose(syllables) == unicodedata.normalize("NFD", syllables)


def test_jamo_per_syllable_on_the_korean_corpus(corpus_text):
    text = corpus_text["korean-chatbot"]
    n_syllables = sum(1 for c in text if "\uac00" <= c <= "\ud7a3")
    jamo_per_syllable = (len(decompose(text)) - (len(text) - n_syllables)) / n_syllables
    assert 2.0 < jamo_per_syllable < 3.0  # 2 or 3 each: about 2.4 here
    tokenizer = JamoTokenizer.from_text(text)
    assert tokenizer.vocab_size < CharTokenizer.from_text(text).vocab_size / 5
    assert not tokenizer.equals_char and has_hangul(text)


def test_jamo_leaves_other_characters_composed():
    tokenizer = JamoTokenizer.from_text("café 한 ㅠㅠ")
    assert tokenizer.encode("é") == [tokenizer.stoi["\u00e9"]]  # é stays one token, not e + U+0301
    assert tokenizer.encode("ㅠ") == [tokenizer.stoi["ㅠ"]]  # a compatibility jamo is not a syllable: kept as is
    assert "한" not in tokenizer.stoi and "\u1112" in tokenizer.stoi
    assert tokenizer.decode(tokenizer.encode("café 한 ㅠㅠ")) == "café 한 ㅠㅠ"


@pytest.mark.parametrize(
    "text, culprit",
    [
        ("cafe\u0301", r"U\+0301\) COMBINING ACUTE ACCENT at position 4"),
        ("x\u1112\u1161\u11ab", r"U\+1161\) HANGUL JUNGSEONG A at position 2"),  # decomposed jamo: would become 한
        ("\u212b", r"U\+212B\) ANGSTROM SIGN at position 0"),  # NFC replaces it by Å (U+00C5)
    ],
)
def test_jamo_refuses_text_that_is_not_nfc(text, culprit):
    with pytest.raises(NotNFCError, match=rf"not in Unicode NFC: .*{culprit}.*normalize\('NFC', text\)"):
        JamoTokenizer.from_text(text)
    tokenizer = JamoTokenizer.from_text(unicodedata.normalize("NFC", text))
    with pytest.raises(NotNFCError, match=culprit):
        tokenizer.encode(text)
    assert issubclass(NotNFCError, ValueError)


def test_jamo_names_the_syllable_whose_jamo_is_missing():
    tokenizer = JamoTokenizer.from_text("하")
    with pytest.raises(UnknownCharacterError, match=r"'핳' \(U\+D573\) at position 1: its jamo 'ᇂ' \(U\+11C2\)"):
        tokenizer.encode("하핳")


def test_jamo_without_hangul_is_the_char_tokenizer(corpus_text):
    text = corpus_text["tinyshakespeare"]
    jamo, char = JamoTokenizer.from_text(text), CharTokenizer.from_text(text)
    assert not has_hangul(text) and jamo.equals_char
    assert jamo.chars == char.chars and jamo.vocab_size == char.vocab_size == 96
    assert torch.equal(jamo.encode_tensor(text[:10000]), char.encode_tensor(text[:10000]))


# bytes


def test_bytes_are_utf8_and_a_cut_character_decodes_as_a_replacement():
    tokenizer = ByteTokenizer()
    assert tokenizer.vocab_size == 256
    assert tokenizer.encode("a한") == [0x61, 0xED, 0x95, 0x9C]
    assert tokenizer.decode(torch.tensor([0x61, 0xED, 0x95])) == "a\ufffd" == b"a\xed\x95".decode(errors="replace")
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tokenizer.decode([256])


# bpe

TRAIN = "the cat sat on the mat. the hat is on the cat.\n" * 40
VAL = "zyxw zyxw zyxw, the cat.\n" * 200  # zyxw: frequent in val, absent from train


def test_bpe_learns_nothing_from_the_val_text():
    tokenizer = build_tokenizer("bpe", TRAIN, TRAIN + VAL, vocab_size=270)
    learned = [tokenizer.token_bytes[i] for i in range(256, tokenizer.vocab_size)]
    assert len(learned) == 14 and b" cat" in learned
    assert not any(set(token) & set(b"zyxw") for token in learned)  # not even a pair of its letters
    assert tokenizer.decode(tokenizer.encode(VAL)) == VAL
    # the control: trained on the val text too, zyxw becomes a token
    seen = BPETokenizer.train(TRAIN + VAL, 270)
    assert b"zyxw" in [seen.token_bytes[i] for i in range(256, seen.vocab_size)]


def test_bpe_encodes_characters_it_never_saw(bpe512):
    tokenizer = bpe512["tinyshakespeare"][0]
    for text in ["한국어 챗봇", "naïve café ☃ \U0001f600", "\x00\x7f\r\n"]:
        assert tokenizer.decode(tokenizer.encode(text)) == text
    ids = tokenizer.encode("한")  # Shakespeare merged none of its three bytes: one token each
    assert [tokenizer.token_bytes[i] for i in ids] == [b"\xed", b"\x95", b"\x9c"]
    assert tokenizer.decode(tokenizer.encode("a한")[:-1]) == "a\ufffd"  # a sample cut inside a character


def test_bpe_training_is_deterministic(bpe512):
    tokenizer, train_text, rest = bpe512["korean-chatbot"]
    again = BPETokenizer.train(train_text, 512)  # no cache: trains anew
    assert again.hf.to_str() == tokenizer.hf.to_str()
    assert again.token_bytes == tokenizer.token_bytes
    assert torch.equal(again.encode_tensor(rest), tokenizer.encode_tensor(rest))


def test_bpe_is_cached_by_content(tmp_path, monkeypatch):
    first = BPETokenizer.train(TRAIN, 270, tmp_path)
    digest = hashlib.sha256(TRAIN.encode()).hexdigest()[:16]
    path = tmp_path / f"bpe-{digest}-270-{tokenizers.__version__}.json"
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left behind
    mtime = path.stat().st_mtime_ns

    def no_training(*args):
        raise AssertionError("trained again instead of loading the cache")

    monkeypatch.setattr(bpe_module, "_train", no_training)
    second = BPETokenizer.train(TRAIN, 270, tmp_path)
    assert second.token_bytes == first.token_bytes and second.encode(VAL) == first.encode(VAL)
    assert path.stat().st_mtime_ns == mtime
    with pytest.raises(AssertionError, match="trained again"):
        BPETokenizer.train(TRAIN + "!", 270, tmp_path)  # other text: another file


def test_bpe_vocab_size_out_of_reach():
    with pytest.raises(ValueError, match="at least 256.*base alphabet alone is 256"):
        BPETokenizer.train(TRAIN, 255)
    with pytest.raises(ValueError, match=r"reached only 258 tokens \(256 bytes \+ 2 merges\).*vocab_size 5000"):
        BPETokenizer.train("ab ab", 5000)
    assert BPETokenizer.train("ab ab", 258).vocab_size == 258


# bits per character


def test_bits_per_character_of_a_unigram_model_worked_by_hand():
    # "aab" under the unigram p(a) = 2/3, p(b) = 1/3: total nats = -(2 ln 2/3 + ln 1/3);
    # bpc = (2 log2(3/2) + log2 3) / 3 = (2 * 0.5849625 + 1.5849625) / 3 = 0.9182958 (the entropy H(1/3))
    tokenizer = CharTokenizer("ab")
    ids = tokenizer.encode_tensor("aab")
    logits = torch.log(torch.tensor([[2 / 3, 1 / 3]], dtype=torch.float64)).expand(len(ids), 2)
    total_nats = F.cross_entropy(logits, ids, reduction="sum").item()
    assert total_nats == pytest.approx(-(2 * math.log(2 / 3) + math.log(1 / 3)))
    assert bits_per_character(total_nats, 3) == pytest.approx(0.9182958, abs=1e-7)
    with pytest.raises(ValueError, match="positive"):
        bits_per_character(1.0, 0)


def test_chars_per_token():
    assert chars_per_token("aab", CharTokenizer("ab")) == 1.0
    assert chars_per_token("한국어", ByteTokenizer()) == pytest.approx(1 / 3)
    assert chars_per_token("한국어", JamoTokenizer.from_text("한국어")) == pytest.approx(3 / 8)


# the registry


def test_registry_names():
    assert TOKENIZER_CHOICES == ("char", "jamo", "bpe", "bytes")
    assert all(cls.name == name for name, cls in TOKENIZERS.items())


def test_registry_refuses_bad_inputs():
    with pytest.raises(ValueError, match=r"unknown tokenizer 'wordpiece'; choices: char, jamo, bpe, bytes"):
        build_tokenizer("wordpiece", TRAIN, TRAIN)
    for name in ("char", "jamo", "bytes"):
        with pytest.raises(ValueError, match=f"vocab_size is only for bpe; tokenizer '{name}'"):
            build_tokenizer(name, TRAIN, TRAIN, vocab_size=512)
    with pytest.raises(ValueError, match="'bpe' needs a vocab_size"):
        build_tokenizer("bpe", TRAIN, TRAIN)


def test_registry_builds_char_and_jamo_from_the_full_text():
    full = TRAIN + "한"
    for name in ("char", "jamo"):
        tokenizer = build_tokenizer(name, TRAIN, full, extra_chars=False)
        assert tokenizer.decode(tokenizer.encode(full)) == full
    assert build_tokenizer("char", TRAIN, full).vocab_size == len(set(full + EXTRA_CHARS))
    assert isinstance(build_tokenizer("bytes", TRAIN, full), ByteTokenizer)
