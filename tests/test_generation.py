"""mmfast.generation (HF-compatible greedy / beam search in numpy) against transformers'
``model.generate`` on tiny random VisionEncoderDecoderModels (ViT + GPT-2), token for token.

The numpy decoders run on the model's own logits: the step re-runs the torch decoder on the
whole prefix (no cache, simple and obviously right). The prefix lives in the decoder state, so
beam search must reorder it by source beam at every step exactly like HF reorders its KV cache;
the encoder output is a `constant` entry (never reordered).

Score tolerance (beam: HF's ``sequences_scores``; greedy: the sum of log_softmax(processed
logits) of the chosen tokens). Both sides add the same float32 log-probabilities in the same
order; only the log-softmax kernels differ (mmfast's vs torch's). Each computes
x - max - log(sum exp(x - max)), whose terms are at most M = max |logit| (seen by the step) and
log V, so each is within a few ulps of that: |d log p| <= 4 eps (M + log V) per step. Once two
partial sums differ, each float32 addition may also round differently, by <= eps |S| (S the
unpenalised sum, the largest partial sum in magnitude). Over T steps
|dS| <= T eps (4 (M + log V) + |S|); the length penalty divides both by the same float32
L ** lp, with one more rounding: tol = (T + 1) eps (4 (M + log V) + |S|) / L ** lp.
(Measured: at most a tenth of tol.)
"""

from __future__ import annotations

import itertools
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

from mmfast.generation import GenerationConfig, _topk, beam_search, generate, greedy

EPS = float(np.finfo(np.float32).eps)
START, PAD = 1, 0
# name -> (seed, vocabulary, eos ids, their logit bias): some captions end after 0-10 tokens,
# some never
MODELS = {"one_eos": (0, 150, (2,), 4.0), "two_eos": (1, 257, (2, 5), 2.5)}


# ---------------------------------------------------------------------- the torch harness


def _make_model(seed: int, vocab: int, eos: tuple[int, ...], eos_bias: float) -> Any:
    torch = pytest.importorskip("torch")
    tf = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    enc = tf.ViTConfig(
        image_size=16,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
    )
    dec = tf.GPT2Config(
        vocab_size=vocab,
        n_positions=64,
        n_embd=32,
        n_layer=2,
        n_head=2,
        add_cross_attention=True,
        is_decoder=True,
        bos_token_id=START,
        eos_token_id=eos[0],
        initializer_range=0.3,  # peaked distributions (0.02 makes them near-uniform)
    )
    cfg = tf.VisionEncoderDecoderConfig.from_encoder_decoder_configs(enc, dec)
    model = tf.VisionEncoderDecoderModel(cfg).eval()
    # an lm_head with a bias toward eos, so that beams finish early at various lengths
    head = torch.nn.Linear(32, vocab, bias=True)
    with torch.no_grad():
        head.weight.copy_(model.decoder.lm_head.weight)
        head.bias.zero_()
        head.bias[list(eos)] = eos_bias
    model.decoder.lm_head = head
    g = model.generation_config
    g.decoder_start_token_id, g.bos_token_id, g.pad_token_id = START, START, PAD
    g.eos_token_id = list(eos) if len(eos) > 1 else eos[0]
    return model


@pytest.fixture(scope="module")
def models() -> Iterator[dict[str, Any]]:
    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: threads only cost (and spin on a busy machine)
    try:
        yield {name: _make_model(*spec) for name, spec in MODELS.items()}
    finally:
        torch.set_num_threads(threads)


class TorchStep:
    """A numpy step over the torch model: state = {"enc": (B, P, H) encoder output (constant),
    "prefix": (B, t) the tokens fed so far}; attention = (input position, input token, prefix
    sum), which lets a test check which beam's history each attention row came from."""

    def __init__(self, model: Any) -> None:
        self.model, self.calls, self.max_abs_logit, self.vocab = model, 0, 0.0, 0

    def __call__(
        self, tokens: np.ndarray, state: dict[str, np.ndarray]
    ) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
        import torch
        from transformers.modeling_outputs import BaseModelOutput

        assert tokens.dtype == np.int64 and tokens.shape == (state["enc"].shape[0],)
        prefix = np.concatenate([state["prefix"], tokens[:, None]], 1)
        with torch.no_grad():
            out = self.model(
                encoder_outputs=BaseModelOutput(last_hidden_state=torch.from_numpy(state["enc"])),
                decoder_input_ids=torch.from_numpy(prefix),
                use_cache=False,
            )
        logits = out.logits[:, -1].numpy()
        self.calls += 1
        self.max_abs_logit = max(self.max_abs_logit, float(np.abs(logits).max()))
        self.vocab = logits.shape[1]
        att = np.stack([np.full(len(tokens), prefix.shape[1]), tokens, prefix.sum(1)], 1)
        return logits, {"enc": state["enc"], "prefix": prefix}, att.astype(np.float32)


def _pixels(batch: int) -> Any:
    import torch

    return torch.randn(batch, 3, 16, 16, generator=torch.Generator().manual_seed(10 + batch))


def _initial_state(model: Any, pixels: Any) -> dict[str, np.ndarray]:
    import torch

    with torch.no_grad():
        enc = model.encoder(pixel_values=pixels).last_hidden_state.numpy()
    return {"enc": enc, "prefix": np.zeros((len(enc), 0), np.int64)}


def _config(model: Any, **kw: Any) -> GenerationConfig:
    """Ours, read by from_hf from the model's token ids plus generate's kwargs."""
    g = model.generation_config.to_dict()
    d = {
        k: g[k] for k in ("decoder_start_token_id", "bos_token_id", "eos_token_id", "pad_token_id")
    }
    return GenerationConfig.from_hf({**d, **kw})


def _cut_at_eos(seq: list[int], eos: tuple[int, ...]) -> list[int]:
    seq = seq[1:]  # the start token
    return next((seq[:j] for j, t in enumerate(seq) if t in eos), seq)


def _check_attention(tokens: list[int], att: np.ndarray) -> None:
    """Row j is the step that produced token j: its input was position j + 1 of the prefix."""
    inputs = [START, *tokens]
    assert att.shape[0] in (len(tokens), len(tokens) + 1)
    for j, row in enumerate(att):
        assert row.tolist() == [j + 1, inputs[j], sum(inputs[: j + 1])], j


def _run_both(
    model: Any, batch: int, **kw: Any
) -> tuple[Any, list[list[int]], Any, TorchStep, GenerationConfig]:
    import torch

    pixels = _pixels(batch)
    with torch.no_grad():
        out = model.generate(pixels, output_scores=True, return_dict_in_generate=True, **kw)
    cfg = _config(model, **kw)
    hf_tokens = [_cut_at_eos(s, cfg.eos_token_id) for s in out.sequences.tolist()]
    step = TorchStep(model)
    state = _initial_state(model, pixels)
    result = generate(step, state, cfg, constant=frozenset({"enc"}))
    return result, hf_tokens, out, step, cfg


def _tolerance(score: float, steps: int, step: TorchStep, lp: float) -> float:
    penalty = float(steps) ** lp
    m = step.max_abs_logit + np.log(step.vocab)
    return (steps + 1) * EPS * (4 * m + abs(score * penalty)) / penalty


def _check_beam(model: Any, batch: int, **kw: Any) -> list[list[int]]:
    r, hf_tokens, out, step, cfg = _run_both(model, batch, **kw)
    assert r.tokens == hf_tokens, kw
    assert step.calls == len(out.scores)  # the same number of steps: the same stopping
    hf_scores = out.sequences_scores.numpy()
    for i, t in enumerate(r.tokens):
        n = min(len(t) + 1, cfg.max_length - 1)  # generated length, eos included
        tol = _tolerance(float(hf_scores[i]), n, step, cfg.length_penalty)
        assert abs(float(r.scores[i]) - float(hf_scores[i])) <= tol, (i, kw)
        _check_attention(t, r.attention[i])
    return r.tokens


def _check_greedy(model: Any, batch: int, **kw: Any) -> list[list[int]]:
    import torch

    r, hf_tokens, out, step, _ = _run_both(model, batch, **kw)
    assert r.tokens == hf_tokens, kw
    assert step.calls == len(out.scores)
    # the reference score: HF's processed logits (out.scores), log-softmaxed, chosen tokens
    chosen = out.sequences[:, 1:]
    logp = torch.stack([torch.log_softmax(s, -1) for s in out.scores], 1)  # (B, T, V)
    picked = logp.gather(-1, chosen[:, :, None])[..., 0]
    for i, t in enumerate(r.tokens):
        n = min(len(t) + 1, picked.shape[1])
        ref = float(picked[i, :n].sum())
        tol = _tolerance(ref, n, step, 0.0)
        assert abs(float(r.scores[i]) - ref) <= tol, (i, kw)
        _check_attention(t, r.attention[i])
    return r.tokens


# -------------------------------------------------------------------- against generate()


@pytest.mark.export
@pytest.mark.parametrize("model_name", list(MODELS))
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("max_new_tokens", [3, 20])
def test_greedy_matches_generate(
    models: dict[str, Any], model_name: str, batch: int, max_new_tokens: int
):
    _check_greedy(models[model_name], batch, max_new_tokens=max_new_tokens)


@pytest.mark.export
@pytest.mark.parametrize("model_name", list(MODELS))
@pytest.mark.parametrize("num_beams", [2, 4, 5])
@pytest.mark.parametrize("early_stopping", [False, True, "never"])
def test_beam_matches_generate(
    models: dict[str, Any], model_name: str, num_beams: int, early_stopping: bool | str
):
    lengths: set[int] = set()
    for lp, batch in itertools.product([0.0, 1.0, 2.0, -1.0], [1, 3]):
        tokens = _check_beam(
            models[model_name],
            batch,
            num_beams=num_beams,
            max_new_tokens=20,
            length_penalty=lp,
            early_stopping=early_stopping,
        )
        lengths |= {len(t) for t in tokens}
    # the cases are worth something only if beams end at various lengths (and some never,
    # unless early_stopping=True ends the search as soon as num_beams hypotheses are done)
    assert len(lengths) >= 3 and min(lengths) < 20, lengths
    assert early_stopping is True or 20 in lengths, lengths


@pytest.mark.export
@pytest.mark.parametrize("model_name", list(MODELS))
@pytest.mark.parametrize("num_beams", [2, 4])
@pytest.mark.parametrize("max_new_tokens", [1, 4])
def test_beam_short_limit_matches_generate(
    models: dict[str, Any], model_name: str, num_beams: int, max_new_tokens: int
):
    _check_beam(models[model_name], 3, num_beams=num_beams, max_new_tokens=max_new_tokens)


PROCESSOR_CASES = [
    {"no_repeat_ngram_size": 2},
    {"no_repeat_ngram_size": 3},
    {"min_new_tokens": 4},
    {"min_length": 6},  # counts the start token, as HF's
    {"repetition_penalty": 1.3},
    {"repetition_penalty": 0.7},
    {"no_repeat_ngram_size": 2, "repetition_penalty": 1.2, "min_new_tokens": 3},
]


@pytest.mark.export
@pytest.mark.parametrize("model_name", list(MODELS))
@pytest.mark.parametrize(
    "kw", PROCESSOR_CASES, ids=lambda kw: "-".join(f"{k}={v}" for k, v in kw.items())
)
def test_processors_match_generate(models: dict[str, Any], model_name: str, kw: dict[str, Any]):
    model = models[model_name]
    _check_greedy(model, 3, max_new_tokens=15, **kw)
    _check_beam(model, 3, num_beams=3, max_new_tokens=15, **kw)
    _check_beam(
        model, 1, num_beams=4, max_new_tokens=15, length_penalty=2.0, early_stopping=True, **kw
    )


def _random_settings(seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    pick = lambda options: options[int(rng.integers(len(options)))]  # noqa: E731
    kw = {
        "num_beams": pick([1, 2, 3, 4, 5]),
        "max_new_tokens": int(rng.integers(1, 21)),
        "length_penalty": pick([0.0, 0.5, 1.0, 2.0, -1.0]),
        "early_stopping": pick([False, True, "never"]),
        "no_repeat_ngram_size": pick([0, 0, 1, 2, 3]),
        "repetition_penalty": pick([1.0, 1.0, 0.8, 1.3]),
        "min_new_tokens": pick([0, 0, 2, 5]),
    }
    if kw["num_beams"] == 1:  # HF warns about beam-only flags in greedy mode; they do nothing
        del kw["length_penalty"], kw["early_stopping"]
    return kw


@pytest.mark.export
@pytest.mark.filterwarnings("ignore:Unfeasible length constraints")  # min > max: HF warns
@pytest.mark.parametrize("seed", range(40))
def test_random_settings_match_generate(models: dict[str, Any], seed: int):
    kw = _random_settings(seed)
    model = models[list(MODELS)[seed % 2]]
    check = _check_greedy if kw["num_beams"] == 1 else _check_beam
    check(model, 1 + seed % 3, **kw)


@pytest.mark.export
def test_max_length_and_num_beams_from_the_config(models: dict[str, Any]):
    # max_length given instead of max_new_tokens (it counts the start token); and the
    # arguments of greedy / beam_search override the config's
    model = models["one_eos"]
    _check_beam(model, 3, num_beams=3, max_length=8)
    pixels = _pixels(3)
    cfg = _config(model, num_beams=3, max_length=8)
    state = _initial_state(model, pixels)
    a = beam_search(TorchStep(model), state, cfg)
    b = beam_search(TorchStep(model), state, _config(model), max_new_tokens=7, num_beams=3)
    assert a.tokens == b.tokens
    np.testing.assert_array_equal(a.scores, b.scores)
    g = greedy(TorchStep(model), state, cfg, max_new_tokens=7)
    assert g.tokens == generate(TorchStep(model), state, _config(model, max_new_tokens=7)).tokens


@pytest.mark.export
@pytest.mark.parametrize("pad", [None, 7])
def test_without_eos_matches_generate(
    models: dict[str, Any], pad: int | None, monkeypatch: pytest.MonkeyPatch
):
    # no eos: every sequence runs to max_length; beam search keeps 2 * num_beams candidates
    import torch

    model = models["one_eos"]
    # (generate fills a None of the config it is given from the model's: change the model's)
    monkeypatch.setattr(model.generation_config, "eos_token_id", None)
    monkeypatch.setattr(model.generation_config, "pad_token_id", pad)
    pixels = _pixels(3)
    for num_beams in (1, 3):
        with torch.no_grad():
            out = model.generate(pixels, num_beams=num_beams, max_new_tokens=9)
        cfg = GenerationConfig.from_hf(
            {"decoder_start_token_id": START, "eos_token_id": None, "pad_token_id": pad}
        )
        r = generate(TorchStep(model), _initial_state(model, pixels), cfg, 9, num_beams=num_beams)
        assert r.tokens == [s[1:] for s in out.tolist()]


@pytest.mark.export
def test_beam_search_reorders_all_but_constant_state(models: dict[str, Any]):
    model = models["two_eos"]
    state = _initial_state(model, _pixels(3))
    inner = TorchStep(model)
    seen: list[np.ndarray] = []

    def step(tokens: np.ndarray, s: dict[str, np.ndarray]) -> Any:
        seen.append(s["enc"])
        return inner(tokens, s)

    cfg = _config(model, num_beams=4, max_new_tokens=12)
    r = beam_search(step, state, cfg, constant=frozenset({"enc"}))
    # the constant entry: repeated to B*K once, then the very same array at every step
    assert seen[0].shape[0] == 12 and all(e is seen[0] for e in seen)
    # without `constant` it is gathered every step: the same result (beams of one image share it)
    r2 = beam_search(TorchStep(model), state, cfg)
    assert r.tokens == r2.tokens
    np.testing.assert_array_equal(r.scores, r2.scores)


# -------------------------------------------------------- torch-free: config and helpers


def test_import_without_torch_or_transformers():
    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['transformers'] = None\n"
        "import numpy as np\n"
        "from mmfast.generation import GenerationConfig, generate\n"
        "cfg = GenerationConfig(3, None, (2,), 0, max_length=6, num_beams=2)\n"
        "def step(tok, s):\n"
        "    logits = np.tile(np.arange(8, dtype=np.float32), (len(tok), 1))\n"
        "    return logits, s, np.zeros((len(tok), 1), np.float32)\n"
        "r = generate(step, {'x': np.zeros((2, 1), np.float32)}, cfg)\n"
        "assert r.tokens == [[7] * 5] * 2, r.tokens\n"
        "print('OK', sorted(m for m in ('torch', 'transformers') if sys.modules.get(m)))\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "OK []"


def test_topk_descending_ties_to_the_lower_index():
    x = np.array([[1, 3, 3, 2, 3, -np.inf], [0, 0, 0, 0, 0, 0]], np.float32)
    vals, idx = _topk(x, 4)
    assert idx.tolist() == [[1, 2, 4, 3], [0, 1, 2, 3]]
    assert vals.tolist() == [[3, 3, 3, 2], [0, 0, 0, 0]]
    vals, idx = _topk(x, 6)  # k == the row: a full stable sort
    assert idx.tolist() == [[1, 2, 4, 3, 0, 5], [0, 1, 2, 3, 4, 5]]
    # many ties at the k-th value (beams masked to -1e9): the lowest indices win
    y = np.full((1, 1000), -1e9, np.float32)
    y[0, 500] = 0.0
    assert _topk(y, 3)[1].tolist() == [[500, 0, 1]]


def _good(**kw: Any) -> GenerationConfig:
    base: dict[str, Any] = dict(
        decoder_start_token_id=1, bos_token_id=1, eos_token_id=(2,), pad_token_id=0, max_length=10
    )
    return GenerationConfig(**{**base, **kw})


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("decoder_start_token_id", -1),
        ("decoder_start_token_id", None),
        ("bos_token_id", 1.5),
        ("eos_token_id", [2]),
        ("eos_token_id", (2, -3)),
        ("pad_token_id", True),
        ("max_length", 1),
        ("max_length", 10.0),
        ("min_length", -1),
        ("num_beams", 0),
        ("length_penalty", float("nan")),
        ("length_penalty", "1"),
        ("early_stopping", "always"),
        ("early_stopping", 1),
        ("no_repeat_ngram_size", -2),
        ("repetition_penalty", 0.0),
        ("repetition_penalty", float("inf")),
    ],
)
def test_config_checks_name_the_field(field: str, value: object):
    with pytest.raises(ValueError, match=f"^{field}:"):
        _good(**{field: value})


def test_config_normalises_numbers():
    c = _good(
        max_length=np.int64(7), length_penalty=2, repetition_penalty=1, early_stopping="never"
    )
    assert type(c.max_length) is int and c.max_length == 7
    assert type(c.length_penalty) is float and type(c.repetition_penalty) is float
    assert _good(pad_token_id=None).pad_id == 2 and _good().pad_id == 0
    assert _good(pad_token_id=None, eos_token_id=()).pad_id is None


def test_from_hf_reads_a_generation_config():
    c = GenerationConfig.from_hf(
        {
            "bos_token_id": 50256,
            "eos_token_id": [50256, 13],
            "pad_token_id": None,
            "max_new_tokens": 16,
            "min_new_tokens": 2,
            "num_beams": 4,
            "early_stopping": True,
            "no_repeat_ngram_size": 3,
            "length_penalty": 2,
            "temperature": 0.7,  # sampling-only: ignored without do_sample, as HF does
            "top_k": 50,
            "do_sample": False,
            "num_return_sequences": 1,
            "use_cache": True,
            "transformers_version": "4.57.0",
            "_from_model_config": True,
        }
    )
    assert c == GenerationConfig(
        decoder_start_token_id=50256,  # no decoder_start_token_id: bos_token_id, as HF
        bos_token_id=50256,
        eos_token_id=(50256, 13),
        pad_token_id=None,
        max_length=17,  # the start token + max_new_tokens
        min_length=3,
        num_beams=4,
        length_penalty=2.0,
        early_stopping=True,
        no_repeat_ngram_size=3,
    )
    d = GenerationConfig.from_hf({"decoder_start_token_id": 5, "eos_token_id": 2, "max_length": 9})
    assert (d.decoder_start_token_id, d.eos_token_id, d.max_length, d.num_beams) == (5, (2,), 9, 1)
    # neither max_length nor max_new_tokens: transformers 5 generates 20 new tokens
    assert GenerationConfig.from_hf({"decoder_start_token_id": 5}).max_length == 21
    assert (
        GenerationConfig.from_hf({"bos_token_id": 5, "early_stopping": "never"}).early_stopping
        == "never"
    )


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("do_sample", True),
        ("num_return_sequences", 2),
        ("bad_words_ids", [[5]]),
        ("forced_bos_token_id", 3),
        ("forced_eos_token_id", 2),
        ("suppress_tokens", [4]),
        ("renormalize_logits", True),
        ("penalty_alpha", 0.6),
        ("num_beam_groups", 2),
        ("diversity_penalty", 0.5),
        ("encoder_repetition_penalty", 1.2),
        ("guidance_scale", 1.5),
        ("remove_invalid_values", True),
        ("exponential_decay_length_penalty", [5, 1.1]),
        ("max_time", 1.0),
        ("not_a_generation_field", 1),
    ],
)
def test_from_hf_refuses_what_it_cannot_reproduce(key: str, value: object):
    with pytest.raises(ValueError, match=f"^{key}:"):
        GenerationConfig.from_hf({"decoder_start_token_id": 1, "eos_token_id": 2, key: value})


@pytest.mark.parametrize(
    ("d", "field"),
    [
        ({"eos_token_id": 2}, "decoder_start_token_id"),
        ({"bos_token_id": 1, "max_new_tokens": 0}, "max_new_tokens"),
        ({"bos_token_id": 1, "min_new_tokens": -1}, "min_new_tokens"),
        ({"bos_token_id": 1, "early_stopping": "yes"}, "early_stopping"),
        ({"bos_token_id": 1, "eos_token_id": "2"}, "eos_token_id"),
    ],
)
def test_from_hf_checks_values(d: dict[str, Any], field: str):
    with pytest.raises(ValueError, match=f"^{field}:"):
        GenerationConfig.from_hf(d)


def _toy_step(v: int = 8) -> Callable[..., Any]:
    def step(tok: np.ndarray, s: dict[str, np.ndarray]) -> Any:
        return np.zeros((len(tok), v), np.float32), s, np.zeros((len(tok), 1), np.float32)

    return step


def test_decoder_argument_checks():
    state = {"x": np.zeros((2, 1), np.float32)}
    cfg = _good()
    with pytest.raises(ValueError, match=r"^max_new_tokens:"):
        greedy(_toy_step(), state, cfg, max_new_tokens=0)
    with pytest.raises(ValueError, match=r"^num_beams:"):
        beam_search(_toy_step(), state, cfg, num_beams=1)
    with pytest.raises(ValueError, match=r"^state:"):
        greedy(_toy_step(), {}, cfg)
    with pytest.raises(ValueError, match="too few"):  # 2 * 4 continuations kept of 4 * 1
        beam_search(_toy_step(1), state, cfg, num_beams=4)

    def nan_step(tok: np.ndarray, s: dict[str, np.ndarray]) -> Any:
        return np.full((len(tok), 8), np.nan, np.float32), s, np.zeros((len(tok), 1))

    with pytest.raises(ValueError, match="NaN"):
        beam_search(nan_step, state, cfg, num_beams=2)


@pytest.mark.export
def test_from_hf_knows_every_field_of_transformers_generation_config():
    # a new transformers field fails here first (from_hf refuses keys it does not know)
    tf = pytest.importorskip("transformers")
    full = tf.GenerationConfig(bos_token_id=1, eos_token_id=[2, 3], num_beams=3).to_dict()
    c = GenerationConfig.from_hf(full)
    assert (c.decoder_start_token_id, c.eos_token_id, c.num_beams) == (1, (2, 3), 3)
