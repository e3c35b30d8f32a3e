"""numpy decoding (runtime) against the PyTorch reference decoding, on a toy decoder step."""

from __future__ import annotations

import numpy as np
import pytest

from mmfast.decoding import EOS, beam_search, greedy
from mmfast.tokenizer import WORD_LEVEL, SpecialTokens

V, H, N = 11, 16, 5


def make_weights(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    w = {
        "emb": rng.standard_normal((V, H)),
        "wh": rng.standard_normal((H, H)) / np.sqrt(H),
        "wo": rng.standard_normal((H, V)) * 1.5,
        "wa": rng.standard_normal((H, N)),
    }
    w["wo"][:, EOS] += 0.15  # sequences end, at different lengths
    w = {k: v.astype(np.float32) for k, v in w.items()}
    w["bias"] = np.zeros(V, np.float32)
    w["bias"][[0, 1]] = -30.0  # like a trained captioner: never <pad> or <bos>
    return w


def numpy_step(w):
    def step(tokens, state):
        h = np.tanh(state["h"] @ w["wh"] + w["emb"][tokens])
        logits = h @ w["wo"] + w["bias"]
        a = np.exp(h @ w["wa"])
        return logits, {"h": h.astype(np.float32)}, (a / a.sum(-1, keepdims=True))

    return step


def initial_state(batch: int, seed: int = 1) -> dict[str, np.ndarray]:
    return {"h": np.random.default_rng(seed).standard_normal((batch, H)).astype(np.float32)}


def test_greedy_picks_argmax_and_scores_its_log_probs():
    w = make_weights()
    r = greedy(numpy_step(w), initial_state(6), max_len=12)
    # replay each sequence: every token is the argmax, the score the sum of log-probs
    step = numpy_step(w)
    for i, toks in enumerate(r.tokens):
        state = {"h": initial_state(6)["h"][i : i + 1]}
        tok, total = np.array([1]), 0.0
        for t in [*toks, EOS][:12]:
            logits, state, _ = step(tok, state)
            lp = logits[0] - np.log(np.exp(logits[0] - logits[0].max()).sum()) - logits[0].max()
            assert int(np.argmax(lp)) == t
            total += lp[t]
            tok = np.array([t])
        assert r.scores[i] == pytest.approx(total, rel=1e-5, abs=1e-5)
        assert r.attention[i].shape == (min(len(toks) + 1, 12), N)


def test_beam_one_is_greedy_and_wider_beams_score_no_worse():
    w = make_weights(2)
    s0 = initial_state(5, 3)
    g = greedy(numpy_step(w), s0, max_len=10)
    b1 = beam_search(numpy_step(w), s0, max_len=10, beam=1)
    assert b1.tokens == g.tokens
    np.testing.assert_allclose(b1.scores, g.scores, rtol=1e-6)
    b4 = beam_search(numpy_step(w), s0, max_len=10, beam=4)
    assert (b4.scores >= g.scores - 1e-5).all()


def relabelled(step, perm: np.ndarray):
    """`step` over a vocabulary whose id i is renamed perm[i]."""
    inv = np.argsort(perm)

    def step2(tokens, state):
        logits, state, att = step(inv[tokens], state)
        return logits[:, inv], state, att

    return step2


@pytest.mark.parametrize("beam", [1, 4])
def test_other_special_ids_decode_the_same_sequences(beam):
    # the same model over a vocabulary whose specials sit elsewhere: the same sequences and
    # scores, relabelled, if decoding takes the ids it is given (with 0-2 it would not)
    perm = np.random.default_rng(7).permutation(V)
    assert set(perm[:3]).isdisjoint(range(3))
    ids = SpecialTokens(*(int(i) for i in perm[:4]))
    w, s0 = make_weights(4), initial_state(6, 2)
    if beam == 1:
        want = greedy(numpy_step(w), s0, max_len=12)
        got = greedy(relabelled(numpy_step(w), perm), s0, max_len=12, special_tokens=ids)
    else:
        want = beam_search(numpy_step(w), s0, 12, beam, length_penalty=0.7)
        got = beam_search(
            relabelled(numpy_step(w), perm), s0, 12, beam, length_penalty=0.7, special_tokens=ids
        )
    assert got.tokens == [[int(perm[t]) for t in toks] for toks in want.tokens]
    assert any(want.tokens) and any(len(t) < 12 for t in want.tokens)  # some end with <eos>
    np.testing.assert_allclose(got.scores, want.scores, rtol=1e-6)
    for a, b in zip(got.attention, want.attention, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("beam", [1, 3])
def test_bos_may_be_eos(beam):
    # GPT-2's vocabulary: <|endoftext|> (50256) both starts and ends a sequence
    end = 50256
    ids = SpecialTokens(pad=end, bos=end, eos=end, unk=end)
    chain = {end: 7, 7: 8, 8: end}  # <|endoftext|> -> 7 -> 8 -> <|endoftext|>

    def step(tokens, state):
        logits = np.zeros((len(tokens), end + 1), np.float32)
        logits[np.arange(len(tokens)), [chain.get(int(t), end) for t in tokens]] = 9.0
        return logits, state, np.ones((len(tokens), 1), np.float32)

    s0 = {"h": np.zeros((2, 1), np.float32)}
    if beam == 1:
        r = greedy(step, s0, 10, special_tokens=ids)
    else:
        r = beam_search(step, s0, 10, beam, special_tokens=ids)
    assert r.tokens == [[7, 8], [7, 8]]
    assert [a.shape for a in r.attention] == [(3, 1), (3, 1)]
    assert greedy(step, s0, 10, special_tokens=WORD_LEVEL).tokens != r.tokens


def test_bad_arguments():
    w = make_weights()
    with pytest.raises(ValueError, match="max_len"):
        greedy(numpy_step(w), initial_state(1), max_len=0)
    with pytest.raises(ValueError, match="beam_size"):
        beam_search(numpy_step(w), initial_state(1), max_len=3, beam=0)


@pytest.mark.export
@pytest.mark.parametrize("beam,alpha", [(1, 0.0), (3, 0.0), (4, 0.7), (5, 1.0)])
def test_matches_the_pytorch_reference_token_for_token(beam, alpha):
    torch = pytest.importorskip("torch")
    ref = pytest.importorskip("mmfast_export.decoding")
    w = make_weights(4)
    tw = {k: torch.from_numpy(v) for k, v in w.items()}

    class TorchStep:
        def step(self, tokens, state):
            h = torch.tanh(state["h"] @ tw["wh"] + tw["emb"][tokens])
            return h @ tw["wo"] + tw["bias"], {"h": h}, torch.softmax(h @ tw["wa"], -1)

    s0 = initial_state(7, 5)
    if beam == 1:
        want = ref.greedy(TorchStep(), {"h": torch.from_numpy(s0["h"])}, max_len=14)
        got = greedy(numpy_step(w), s0, max_len=14)
    else:
        want = ref.beam_search(
            TorchStep(), {"h": torch.from_numpy(s0["h"])}, 14, beam=beam, length_penalty=alpha
        )
        got = beam_search(numpy_step(w), s0, 14, beam=beam, length_penalty=alpha)
    assert got.tokens == want.tokens
    np.testing.assert_allclose(got.scores, want.scores.numpy(), rtol=1e-5, atol=1e-5)
    for a, b in zip(got.attention, want.attention, strict=True):
        np.testing.assert_allclose(a, b.numpy(), rtol=1e-5, atol=1e-6)
