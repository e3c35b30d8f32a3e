"""Models and decoding: shapes, step == parallel forward, beam 1 == greedy, batched ==
unbatched, no data-dependent behaviour inside a step."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from mmfast_export.decoding import beam_search, greedy  # noqa: E402
from mmfast_export.models.captioner_lstm import LSTMCaptioner, LSTMCaptionerConfig  # noqa: E402
from mmfast_export.models.captioner_transformer import (  # noqa: E402
    TransformerCaptioner,
    TransformerCaptionerConfig,
)
from mmfast_export.models.encoder import ConvEncoder, EncoderConfig  # noqa: E402
from mmfast_export.models.retriever import Retriever, RetrieverConfig, info_nce  # noqa: E402
from mmfast_export.models.vqa import VQAConfig, VQAModel  # noqa: E402

pytestmark = pytest.mark.export

ENC = EncoderConfig(image_size=32, widths=(8, 16, 32))
V = 23


def _captioners() -> list[torch.nn.Module]:
    torch.manual_seed(0)
    lstm = LSTMCaptioner(LSTMCaptionerConfig(V, ENC, embed=16, hidden=32, att=16, max_len=12))
    tr = TransformerCaptioner(TransformerCaptionerConfig(V, ENC, dim=32, heads=4, max_len=12))
    for m in (lstm, tr):
        m.eval()
        # sharpen the output so that decoding makes real choices (and eventually stops)
        for p in m.parameters():
            p.data.mul_(1.5)
    return [lstm, tr]


def test_encoder_shapes() -> None:
    enc = ConvEncoder(ENC)
    regions, pooled = enc(torch.randn(2, 3, 32, 32))
    assert regions.shape == (2, 16, 32) and pooled.shape == (2, 32)


@pytest.mark.parametrize("which", [0, 1], ids=["lstm", "transformer"])
def test_step_matches_teacher_forcing(which: int) -> None:
    """Running the exported step token by token gives the training forward's logits."""
    m = _captioners()[which]
    images = torch.randn(3, 3, 32, 32)
    tokens = torch.randint(3, V, (3, 7))
    tokens[:, 0] = 1
    with torch.no_grad():
        ref_logits, ref_att = m(images, tokens)
        state = m.encode(images)
        for t in range(tokens.shape[1]):
            logits, state, att = m.step(tokens[:, t], state)
            torch.testing.assert_close(logits, ref_logits[:, t], rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(att, ref_att[:, t], rtol=1e-4, atol=1e-5)
            assert att.shape == (3, 16)
            torch.testing.assert_close(att.sum(-1), torch.ones(3))


@pytest.mark.parametrize("which", [0, 1], ids=["lstm", "transformer"])
def test_beam1_equals_greedy_and_batched_equals_unbatched(which: int) -> None:
    m = _captioners()[which]
    images = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        g = greedy(m, m.encode(images), max_len=11)
        b1 = beam_search(m, m.encode(images), max_len=11, beam=1)
        assert g.tokens == b1.tokens
        torch.testing.assert_close(g.scores, b1.scores)
        b3 = beam_search(m, m.encode(images), max_len=11, beam=3)
        for i in range(4):
            gi = greedy(m, m.encode(images[i : i + 1]), max_len=11)
            assert gi.tokens[0] == g.tokens[i]
            torch.testing.assert_close(gi.attention[0], g.attention[i], rtol=1e-4, atol=1e-6)
            bi = beam_search(m, m.encode(images[i : i + 1]), max_len=11, beam=3)
            assert bi.tokens[0] == b3.tokens[i]
        # the beam never finds a worse sequence than greedy under the model's own score
        assert bool((b3.scores >= g.scores - 1e-4).all())
        for toks, att in zip(g.tokens, g.attention, strict=True):
            assert 2 not in toks and att.shape[0] == min(len(toks) + 1, 11)


def test_transformer_cache_is_fixed_size() -> None:
    m = _captioners()[1]
    state = m.encode(torch.randn(2, 3, 32, 32))
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    with torch.no_grad():
        for _ in range(3):
            _, state, _ = m.step(torch.tensor([1, 1]), state)
    assert {k: tuple(v.shape) for k, v in state.items()} == shapes
    assert state["pos"].tolist() == [3, 3]
    assert shapes["self_k"] == (2, 2, 4, 12, 8)  # (B, L, H, T_max, dh)
    assert shapes["cross_k"] == (2, 2, 4, 16, 8)  # (B, L, H, N, dh)


def test_lstm_encoder_precomputes_attention_projection() -> None:
    m = _captioners()[0]
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        state = m.encode(images)
        torch.testing.assert_close(state["att_proj"], m.att_regions(state["regions"]))


def test_retriever_embeddings_and_loss() -> None:
    torch.manual_seed(0)
    m = Retriever(RetrieverConfig(V, ENC, text_dim=32, embed_dim=16, max_len=10))
    img, regions = m.encode_image(torch.randn(4, 3, 32, 32))
    tokens = torch.randint(3, V, (4, 6))
    tokens[1, 4:] = 0
    txt, feats, mask = m.encode_text(tokens)
    torch.testing.assert_close(img.norm(dim=-1), torch.ones(4))
    torch.testing.assert_close(txt.norm(dim=-1), torch.ones(4))
    assert regions.shape == (4, 16, 32) and feats.shape == (4, 6, 32)
    loss = info_nce(img, txt, m.temperature_scale())
    loss.backward()
    assert m.logit_scale.grad is not None
    s = m.rerank(feats, mask, regions)
    assert s.shape == (4,)
    # padding does not change a text's embedding
    t2 = torch.cat([tokens[1:2, :4], torch.zeros(1, 3, dtype=torch.long)], 1)
    m.eval()
    with torch.no_grad():
        a = m.encode_text(tokens[1:2])[0]
        b = m.encode_text(t2)[0]
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_vqa_shapes() -> None:
    m = VQAModel(VQAConfig(V, 7, ENC, dim=32, att=16))
    logits, att = m(
        torch.randn(2, 3, 32, 32), torch.randint(3, V, (5, 6)), torch.tensor([0, 0, 1, 1, 1])
    )
    assert logits.shape == (5, 7) and att.shape == (5, 2, 16)
