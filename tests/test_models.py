"""The models: the GPT's switches (causality, parameter counts by hand), generate's crop, declarations.

Sizes are the lecture's small ones (n_embd 32, context 8) or smaller, on the CPU: the whole file runs in seconds.
Every expected parameter count is arithmetic written out here, layer by layer, never the model's own sum.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from harness.data.corpora import DataConfig, load_corpus
from harness.models.base import CharLanguageModel
from harness.models.config import ModelConfig
from harness.models.gpt import GPTLanguageModel
from harness.models.registry import MODEL_KINDS, build_model, count_parameters

V, T, C = 65, 8, 32  # Tiny Shakespeare's vocabulary, the lecture's block size and n_embd

# The lecture's ladder (karpathy/ng-video-lecture v2.py, commits in shared/references/lecture-ladder.md):
# scores scaled by n_embd, PyTorch's default init, no LayerNorm until its own rung.
LECTURE = dict(kind="gpt", n_embd=C, attention_scale="n_embd", init="pytorch", layer_norm="none", dropout=0.0)
RUNGS = {
    "bigram-factored": dict(n_layer=0),  # 28e5fd7
    "one-head": dict(n_layer=1, n_head=1, feed_forward=False, residual=False),  # 10024b1
    "multi-head": dict(n_layer=1, n_head=4, feed_forward=False, residual=False),  # a6e0bee
    "feed-forward": dict(n_layer=1, n_head=4, ffn_multiplier=1, residual=False),  # 97dd3f9
    "3-blocks": dict(n_layer=3, n_head=4, ffn_multiplier=1, residual=False),  # the video
    "residual": dict(n_layer=3, n_head=4, ffn_multiplier=4, residual=True),  # 5c3a2d2
    "layer-norm": dict(n_layer=3, n_head=4, ffn_multiplier=4, residual=True, layer_norm="pre"),  # 0016836
}


def rung(name: str, **more) -> ModelConfig:
    return ModelConfig(**{**LECTURE, **RUNGS[name], **more})


def gpt(config: ModelConfig, context_length: int = T, vocab: int = V) -> GPTLanguageModel:
    assert not config.problems(), config.problems()
    torch.manual_seed(0)
    return build_model(config, vocab, context_length).eval()


# -- causality ------------------------------------------------------------------------------------
SWITCHES = list(itertools.product([False, True], [False, True], [False, True], [False, True], ["none", "pre"]))
# attention and feed_forward both false: an empty block is a config error (test_config_errors_name_the_key);
# ffn_multiplier is 1 without residual (anything else is an error there) and 2 with it.
VALID = [s for s in SWITCHES if s[1] or s[2]]


@pytest.mark.parametrize("position_embedding,attention,feed_forward,residual,layer_norm", VALID)
def test_logits_never_read_the_future(position_embedding, attention, feed_forward, residual, layer_norm):
    config = ModelConfig(
        kind="gpt",
        n_layer=2,
        n_head=2,
        n_embd=8,
        position_embedding=position_embedding,
        attention=attention,
        feed_forward=feed_forward,
        residual=residual,
        layer_norm=layer_norm,
        ffn_multiplier=2 if residual else 1,
        init="pytorch",
    )  # nanoGPT's small weights without LayerNorm move logits by ~1e-6 only
    model = gpt(config)
    g = torch.Generator().manual_seed(1)
    idx = torch.randint(V, (3, T), generator=g)
    logits, _ = model(idx)
    for t in range(T):
        changed = idx.clone()
        changed[:, t + 1 :] = (idx[:, t + 1 :] + 1 + torch.randint(V - 1, (3, T - t - 1), generator=g)) % V
        torch.testing.assert_close(model(changed)[0][:, : t + 1], logits[:, : t + 1], rtol=0, atol=1e-6)
    # The past: with attention, position T-1 reads token 0; without it, each position reads only its own token.
    earlier = idx.clone()
    earlier[:, 0] = (idx[:, 0] + 1) % V
    moved = (model(earlier)[0][:, -1] - logits[:, -1]).abs().max().item()
    assert moved > 1e-4 if attention else moved == 0.0


def test_no_blocks_is_embeddings_and_lm_head():
    """n_layer 0: the lecture's "bigram, factored" rung; logits at t read token t and position t only."""
    model = gpt(rung("bigram-factored"))
    idx = torch.randint(V, (2, T))
    expected = model.lm_head(model.wte(idx) + model.wpe.weight[:T])
    torch.testing.assert_close(model(idx)[0], expected)


def test_input_longer_than_the_context_is_refused():
    with pytest.raises(ValueError, match="context_length 8"):
        gpt(rung("one-head"))(torch.zeros(1, T + 1, dtype=torch.long))


# -- attention as the lecture wrote it ---------------------------------------------------------------
@pytest.mark.parametrize("attention_scale", ["n_embd", "head_size"])
def test_attention_matches_the_lectures_heads(attention_scale):
    """The lecture's Head (v2.py @a6e0bee) written out: q k^T * scale, causal mask, softmax, @ v, heads concatenated."""
    config = rung("multi-head", attention_scale=attention_scale)
    attn = gpt(config).blocks[0].attn
    x = torch.randn(2, T, C)
    hs = C // 4
    scale = C**-0.5 if attention_scale == "n_embd" else hs**-0.5
    wq, wk, wv = attn.c_attn.weight.split(C, dim=0)
    tril = torch.tril(torch.ones(T, T))
    heads = []
    for h in range(4):
        rows = slice(h * hs, (h + 1) * hs)
        q, k, v = x @ wq[rows].T, x @ wk[rows].T, x @ wv[rows].T
        wei = (q @ k.transpose(-2, -1) * scale).masked_fill(tril == 0, float("-inf"))
        heads.append(F.softmax(wei, dim=-1) @ v)
    torch.testing.assert_close(attn(x), torch.cat(heads, dim=-1), rtol=1e-5, atol=1e-6)


def test_dropout_is_active_in_training_only():
    model = gpt(rung("layer-norm", dropout=0.5))
    idx = torch.randint(V, (2, T))
    torch.testing.assert_close(model(idx)[0], model(idx)[0])
    model.train()
    assert not torch.equal(model(idx)[0], model(idx)[0])


# -- parameter counts, by hand ---------------------------------------------------------------------
def test_each_rung_of_the_ladder_adds_what_the_lecture_added():
    """V 65, context 8, n_embd 32; each line is the layers a rung adds (weights + biases)."""
    tok, pos, lm_head = V * C, T * C, C * V + V  # lm_head has a bias, as in the lecture
    qkv = 3 * C * C  # q, k, v Linears without bias, any number of heads
    ffn_1 = C * C + C  # Linear(32, 32) + ReLU
    proj = C * C + C  # attention projection
    ffn_4 = (C * 4 * C + 4 * C) + (4 * C * C + C)  # Linear(32, 128), ReLU, Linear(128, 32)
    ln = 2 * C  # weight and bias
    expected = {
        "bigram-factored": tok + pos + lm_head,
        "one-head": tok + pos + qkv + lm_head,
        "multi-head": tok + pos + qkv + lm_head,
        "feed-forward": tok + pos + qkv + ffn_1 + lm_head,
        "3-blocks": tok + pos + 3 * (qkv + ffn_1) + lm_head,
        "residual": tok + pos + 3 * (qkv + proj + ffn_4) + lm_head,
        "layer-norm": tok + pos + 3 * (ln + qkv + proj + ln + ffn_4) + ln + lm_head,
    }
    assert expected == {
        "bigram-factored": 4481,
        "one-head": 7553,
        "multi-head": 7553,
        "feed-forward": 8609,
        "3-blocks": 16865,
        "residual": 41921,
        "layer-norm": 42369,
    }
    assert {name: count_parameters(gpt(rung(name))) for name in RUNGS} == expected


def test_each_switch_changes_the_count_by_its_layers():
    """From the last rung (3 blocks, pre-LN, residual, x4 feed-forward): what each switch removes or adds."""
    full = count_parameters(gpt(rung("layer-norm")))
    assert full == 42369
    per_block_attention = (2 * C) + 3 * C * C + (C * C + C)  # ln_1 + q/k/v + projection
    per_block_ffn = (2 * C) + (C * 4 * C + 4 * C) + (4 * C * C + C)  # ln_2 + Linear(32, 128) + Linear(128, 32)
    changes = {
        "position_embedding": (dict(position_embedding=False), -T * C),
        "attention": (dict(attention=False), -3 * per_block_attention),
        "feed_forward": (dict(feed_forward=False), -3 * per_block_ffn),
        # residual off: no projection, and the feed-forward becomes Linear(32, 32) (multiplier 1)
        "residual": (
            dict(residual=False, ffn_multiplier=1),
            -3 * ((C * C + C) + (C * 4 * C + 4 * C) + (4 * C * C + C) - (C * C + C)),
        ),
        "ffn_multiplier": (
            dict(ffn_multiplier=2),  # 128 -> 64 hidden units
            3 * (((C * 2 * C + 2 * C) + (2 * C * C + C)) - ((C * 4 * C + 4 * C) + (4 * C * C + C))),
        ),
        "layer_norm": (dict(layer_norm="none"), -(3 * 2 + 1) * 2 * C),  # 2 per block and the final one
        # no bias in: projection (32), Linear(32, 128) (128), Linear(128, 32) (32), 7 LayerNorms (32), lm_head (65)
        "bias": (dict(bias=False), -(3 * (C + 4 * C + C + 2 * C) + C + V)),
        "n_layer": (dict(n_layer=4), +(2 * C + 3 * C * C + C * C + C) + (2 * C + 8 * C * C + 5 * C)),
        "n_head": (dict(n_head=8), 0),
        "attention_scale": (dict(attention_scale="head_size"), 0),
        "init": (dict(init="nanogpt"), 0),
        "dropout": (dict(dropout=0.2), 0),
    }
    for key, (setting, delta) in changes.items():
        assert count_parameters(gpt(rung("layer-norm", **setting))) - full == delta, key


def test_bigram_and_ffn_counts():
    assert count_parameters(build_model(ModelConfig("bigram"), V, T)) == 65 * 65
    ffn = 65 * 65 + (65 * 256 + 256) + (256 * 128 + 128) + (128 * 65 + 65)
    assert count_parameters(build_model(ModelConfig("ffn"), V, T)) == ffn


def test_the_lectures_final_model_has_its_printed_parameter_count():
    """karpathy/ng-video-lecture gpt.py (v2.py @482b15d; the print is from e93a8c5) prints "10.788929 M parameters"
    for V 65: 6 layers, 6 heads, n_embd 384, block 256, dropout 0.2. Checked against the lecture's own classes."""
    n, ctx, L = 384, 256, 6
    block = (2 * n) + 3 * n * n + (n * n + n) + (2 * n) + (n * 4 * n + 4 * n) + (4 * n * n + n)
    by_hand = V * n + ctx * n + L * block + 2 * n + (n * V + V)
    assert by_hand == 10_788_929
    config = ModelConfig(
        kind="gpt",
        n_layer=L,
        n_head=6,
        n_embd=n,
        dropout=0.2,
        layer_norm="pre",
        attention_scale="n_embd",
        init="pytorch",
    )
    with torch.device("meta"):  # counts without allocating 43 MB
        assert count_parameters(build_model(config, V, ctx)) == 10_788_929


# -- init ------------------------------------------------------------------------------------------
def test_nanogpt_init_scales_the_residual_projections():
    config = rung("layer-norm", n_embd=128, n_layer=2, init="nanogpt")
    model = gpt(config)
    stds = {name: p.std().item() for name, p in model.named_parameters() if p.dim() == 2}
    for name, std in stds.items():
        target = 0.02 / math.sqrt(2 * 2) if name.endswith("c_proj.weight") else 0.02
        assert std == pytest.approx(target, rel=0.1), name
    assert all(torch.all(p == 0) for name, p in model.named_parameters() if name.endswith("bias"))
    # PyTorch's default (the lecture): an Embedding is N(0, 1)
    assert gpt(rung("layer-norm", n_embd=128)).wte.weight.std().item() == pytest.approx(1.0, rel=0.1)


# -- generate --------------------------------------------------------------------------------------
def test_generate_crops_to_the_context():
    model = gpt(rung("layer-norm"))
    seen = []
    model.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[1]))
    prompt = torch.randint(V, (1, 3 * T))
    out = model.generate(prompt, 2 * T, torch.Generator().manual_seed(5))
    assert out.shape == (1, 5 * T) and seen == [T] * (2 * T)
    cropped = model.generate(prompt[:, -T:], 2 * T, torch.Generator().manual_seed(5))
    assert torch.equal(out[:, 3 * T :], cropped[:, T:])  # the tokens before the context never mattered


def test_position_wise_models_see_one_token():
    model = build_model(ModelConfig("ffn"), V, T)
    seen = []
    model.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[1]))
    model.generate(torch.randint(V, (1, 3 * T)), 4)
    assert seen == [1] * 4


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_sampling_before_training_works_for_every_kind(kind, data_dir):
    corpus = load_corpus(DataConfig("tinyshakespeare"), data_dir)
    config = ModelConfig(kind, n_layer=2, n_head=2, n_embd=16)
    model = build_model(config, corpus.tokenizer.vocab_size, T).eval()
    for prompt in (" ", "First Citizen:\nBefore we proceed any further, hear me speak."):  # 1 and > T tokens
        idx = corpus.tokenizer.encode_tensor(prompt).view(1, -1)
        text = corpus.tokenizer.decode(model.generate(idx, 3 * T, torch.Generator().manual_seed(0))[0].tolist())
        assert text.startswith(prompt) and len(text) == len(prompt) + 3 * T


# -- declarations and config errors ----------------------------------------------------------------
def test_a_model_that_does_not_declare_position_wise_fails_with_its_name():
    class ForgetfulModel(CharLanguageModel):
        def __init__(self):
            super().__init__(context_length=T)

    with pytest.raises(TypeError, match="ForgetfulModel does not declare position_wise"):
        ForgetfulModel()

    class VagueModel(CharLanguageModel):
        position_wise = "yes"

        def __init__(self):
            super().__init__(context_length=T)

    with pytest.raises(TypeError, match="VagueModel declares position_wise = 'yes'"):
        VagueModel()
    assert [build_model(ModelConfig(k), V, T).position_wise for k in MODEL_KINDS] == [True, True, False]
    assert all(build_model(ModelConfig(k), V, T).context_length == T for k in MODEL_KINDS)


@pytest.mark.parametrize(
    "setting,key,words",
    [
        (dict(n_embd=30, n_head=4), "n_embd", "divisible by model.n_head (4)"),
        (dict(n_head=0), "n_head", ">= 1"),
        (dict(n_embd=0), "n_embd", ">= 1"),
        (dict(n_layer=-1), "n_layer", ">= 0"),
        (dict(ffn_multiplier=0), "ffn_multiplier", ">= 1"),
        (dict(dropout=1.0), "dropout", "[0, 1)"),
        (dict(dropout=-0.1), "dropout", "[0, 1)"),
        (dict(layer_norm="post"), "layer_norm", "choices: none, pre"),
        (dict(init="xavier"), "init", "choices: pytorch, nanogpt"),
        (dict(attention_scale="C"), "attention_scale", "choices: head_size, n_embd"),
        (dict(residual=False, ffn_multiplier=4), "ffn_multiplier", "model.residual: false"),
        (dict(attention=False, feed_forward=False), "attention", "model.n_layer: 0"),
    ],
)
def test_config_errors_name_the_key(setting, key, words):
    problems = dict(ModelConfig(kind="gpt", **setting).problems())
    assert key in problems and words in problems[key], problems


@pytest.mark.parametrize(
    "setting",
    [
        dict(n_layer=0, attention=False, feed_forward=False),  # no blocks: the block switches mean nothing
        dict(residual=False, feed_forward=False),  # ffn_multiplier is not read without a feed-forward
        dict(n_embd=30, n_head=4, attention=False),  # nor n_head without attention
    ],
)
def test_settings_that_are_not_read_are_not_errors(setting):
    assert ModelConfig(kind="gpt", **setting).problems() == []
    assert ModelConfig(kind="bigram", n_embd=30).problems() == []  # gpt keys are checked for kind gpt only


# -- learning ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", RUNGS)
def test_every_rung_learns_on_real_text(name, data_dir):
    """60 AdamW steps on Tiny Shakespeare windows: the loss falls from about ln 65 = 4.17."""
    corpus = load_corpus(DataConfig("tinyshakespeare"), data_dir)
    model = gpt(rung(name), vocab=corpus.tokenizer.vocab_size).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    windows = corpus.train.unfold(0, T + 1, 1)
    losses = []
    for _ in range(60):
        chunk = windows[torch.randint(len(windows), (32,), generator=g)]
        _, loss = model(chunk[:, :-1], chunk[:, 1:])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-10:]) / 10 < sum(losses[:10]) / 10 - 0.3
