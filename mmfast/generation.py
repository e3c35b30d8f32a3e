"""Hugging Face ``generate()``'s greedy and beam search in numpy (torch-free).

A Hugging Face captioner exported to ONNX (VisionEncoderDecoderModel ViT + GPT-2, BLIP) must
caption token for token as ``model.generate(pixel_values, num_beams=..., ...)`` does. This
module mirrors transformers' algorithms (5.x, ``transformers/generation/utils.py``):

- greedy: ``_sample`` with ``do_sample=False``: argmax over the *processed raw logits*, a
  finished row gets <pad>, stop at <eos> or ``max_length``;
- beam search: the vectorised ``_beam_search``: log_softmax, then the processors; the top
  ``beams_to_keep = max(2, 1 + n_eos) * num_beams`` continuations; finished hypotheses leave
  the running beams (masked with -1e9) for a separate set of ``num_beams`` finished ones,
  scored ``sum log p / generated_len ** length_penalty``; ``early_stopping`` True / False /
  "never"; the output is the best finished hypothesis;
- the logits processors a generation config turns on by default, in ``_get_logits_processor``'s
  order: ``repetition_penalty``, ``no_repeat_ngram_size``, ``min_length`` (``min_new_tokens``
  is the same mask, folded into ``min_length`` by :meth:`GenerationConfig.from_hf`).

Everything else a generation config can ask for (sampling, bad words, forced tokens, several
return sequences, ...) is refused by :meth:`GenerationConfig.from_hf`, naming the field.

mmfast's own decoding (:mod:`mmfast.decoding`: GNMT length penalty, finished beams stay in the
beam) is a different algorithm, kept for mmfast's models.

Arithmetic is float32 where transformers' is (the scores, the -1e9 masks, which round in
float32: -1e9 + x is -1e9 for |x| < 32), with Python's float for ``length ** penalty`` as
there. The log-softmax is mmfast's kernel (:func:`mmfast.ops.log_softmax`), a few float32
ulps from torch's. Top-k order: descending, ties to the lower index (a stable order;
``torch.topk`` leaves the order of ties unspecified); logits holding NaN are refused.

An encoder-decoder decoder starts from ``decoder_start_token_id`` and ``max_length`` counts it
(``max_new_tokens=N`` is ``max_length = 1 + N``). A step is
``step(tokens (B,) int64, state) -> (logits (B, V), state, attention (B, N))`` as in
:mod:`mmfast.decoding`, state a dict of batch-first arrays.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import sliding_window_view

from . import ops
from .decoding import DecodeResult, State, StepFn

__all__ = ["GenerationConfig", "beam_search", "cut_at_eos", "generate", "greedy"]

# transformers' mask for finished / impossible beams; exactly representable in float32
_NEG = np.float32(-1.0e9)
# max_length when a generation config sets neither max_length nor max_new_tokens:
# transformers generates 20 new tokens for an encoder-decoder (5.x by rule; 4.57 adds the start
# token to its default max_length of 20), as tests check under both
_DEFAULT_NEW_TOKENS = 20

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True)
class GenerationConfig:
    """What of a Hugging Face generation config this module reproduces (also a bundle
    manifest section). Build it from ``generation_config.json`` with :meth:`from_hf`."""

    decoder_start_token_id: int  # the decoder's first input
    bos_token_id: int | None
    eos_token_id: tuple[int, ...]  # any of them ends a sequence; () for none
    pad_token_id: int | None  # what a finished greedy row emits (None: eos_token_id[0])
    max_length: int  # tokens in all, the start token included (HF's max_length)
    min_length: int = 0  # <eos> is masked while the sequence (start token included) is shorter
    num_beams: int = 1  # 1: greedy
    length_penalty: float = 1.0  # beam score = sum log p / generated_len ** length_penalty
    early_stopping: bool | str = False  # True, False or "never" (HF's meaning)
    no_repeat_ngram_size: int = 0  # 0: off
    repetition_penalty: float = 1.0  # 1.0: off

    def __post_init__(self) -> None:
        # a frozen dataclass: normalise through object.__setattr__ (numpy ints -> int, ...)
        def put(name: str, value: object) -> None:
            object.__setattr__(self, name, value)

        put(
            "decoder_start_token_id",
            _token_id("decoder_start_token_id", self.decoder_start_token_id),
        )
        for name in ("bos_token_id", "pad_token_id"):
            value = getattr(self, name)
            put(name, None if value is None else _token_id(name, value))
        if not isinstance(self.eos_token_id, tuple):
            raise ValueError(
                f"eos_token_id: expected a tuple of token ids, got {self.eos_token_id!r}"
            )
        put("eos_token_id", tuple(_token_id("eos_token_id", i) for i in self.eos_token_id))
        put("max_length", _int("max_length", self.max_length, lo=2))  # start + one token
        put("min_length", _int("min_length", self.min_length, lo=0))
        put("num_beams", _int("num_beams", self.num_beams, lo=1))
        put("no_repeat_ngram_size", _int("no_repeat_ngram_size", self.no_repeat_ngram_size, lo=0))
        put("length_penalty", _float("length_penalty", self.length_penalty))
        penalty = _float("repetition_penalty", self.repetition_penalty)
        if penalty <= 0.0:
            raise ValueError(f"repetition_penalty: expected a number > 0, got {penalty!r}")
        put("repetition_penalty", penalty)
        early = self.early_stopping
        if not (early is True or early is False or (isinstance(early, str) and early == "never")):
            raise ValueError(
                f"early_stopping: expected true, false or 'never', got {self.early_stopping!r}"
            )

    @property
    def pad_id(self) -> int | None:
        """The id a finished greedy row gets: pad_token_id, else eos_token_id[0] (as HF)."""
        if self.pad_token_id is not None:
            return self.pad_token_id
        return self.eos_token_id[0] if self.eos_token_id else None

    @classmethod
    def from_hf(cls, d: Mapping[str, Any]) -> GenerationConfig:
        """A ``generation_config.json`` (parsed; the caller merges in the model config's token
        ids where the generation config lacks them) -> GenerationConfig.

        ValueError naming the field for what this module cannot reproduce: sampling, several
        return sequences, a processor other than the three above, an unknown key (it might
        change the output). Fields that only sampling reads (temperature, top_k, ...) are
        ignored while ``do_sample`` is false, as transformers ignores them.
        """
        if not isinstance(d, Mapping):
            raise ValueError(f"generation config: expected a JSON object, got {type(d).__name__}")
        for key, value in d.items():
            if not isinstance(key, str):
                raise ValueError(f"generation config: keys must be strings, got {key!r}")
            if key in _TAKEN or key in _IGNORED:
                continue
            if key in _SAMPLING_ONLY:
                continue  # do_sample is checked below: these matter only if it is true
            if key not in _NEUTRAL:
                raise ValueError(
                    f"{key}: not a generation field this runtime knows, so it cannot tell "
                    "whether it changes the output"
                )
            if not any(_same(value, n) for n in _NEUTRAL[key]):
                allowed = " or ".join(repr(n) for n in _NEUTRAL[key])
                raise ValueError(
                    f"{key}: {value!r} is not supported (mmfast reproduces greedy and beam "
                    f"search with repetition_penalty, no_repeat_ngram_size and min_length); "
                    f"only {allowed} is accepted"
                )

        def get(key: str, default: Any) -> Any:
            value = d.get(key)
            return default if value is None else value

        eos = get("eos_token_id", ())
        eos_ids = tuple(eos) if isinstance(eos, (list, tuple)) else (eos,)
        start = get("decoder_start_token_id", d.get("bos_token_id"))
        if start is None:
            raise ValueError(
                "decoder_start_token_id: missing, and no bos_token_id to start from instead"
            )
        # max_new_tokens / min_new_tokens take precedence, counted after the start token
        if d.get("max_new_tokens") is not None:
            max_length = 1 + _int("max_new_tokens", d["max_new_tokens"], lo=1)
        else:
            max_length = get("max_length", 1 + _DEFAULT_NEW_TOKENS)
        if d.get("min_new_tokens") is not None:
            min_length = 1 + _int("min_new_tokens", d["min_new_tokens"], lo=0)
        else:
            min_length = get("min_length", 0)
        early = get("early_stopping", False)
        return cls(
            decoder_start_token_id=start,
            bos_token_id=d.get("bos_token_id"),
            eos_token_id=eos_ids,
            pad_token_id=d.get("pad_token_id"),
            max_length=max_length,
            min_length=min_length,
            num_beams=get("num_beams", 1),
            length_penalty=get("length_penalty", 1.0),
            early_stopping=early,
            no_repeat_ngram_size=get("no_repeat_ngram_size", 0),
            repetition_penalty=get("repetition_penalty", 1.0),
        )


# from_hf's tables. The fields it reads (besides the dataclass's own):
_TAKEN = frozenset(
    {f.name for f in fields(GenerationConfig)} | {"max_new_tokens", "min_new_tokens"}
)
# Fields that do not change which tokens greedy / beam search pick (outputs, caches,
# compilation, bookkeeping; assistant settings act only with an assistant model).
_IGNORED = frozenset(
    {
        "transformers_version",
        "_from_model_config",
        "_commit_hash",
        "use_cache",
        "return_legacy_cache",  # transformers 4.x: the cache object's type, not the tokens
        "cache_implementation",
        "cache_config",
        "max_cache_len",
        "compile_config",
        "disable_compile",
        "continuous_batching_config",
        "output_attentions",
        "output_hidden_states",
        "output_scores",
        "output_logits",
        "return_dict_in_generate",
        "num_assistant_tokens",
        "num_assistant_tokens_schedule",
        "assistant_confidence_threshold",
        "assistant_lookbehind",
        "target_lookbehind",
        "assistant_ensemble_weight",
        "speculation_type",
        "max_matching_ngram_size",
        "prefill_chunk_size",
    }
)
# Read only when sampling (TemperatureLogitsWarper, TopK..., in _get_logits_processor's
# do_sample branch); top_k also selects contrastive search, with penalty_alpha (refused).
_SAMPLING_ONLY = frozenset(
    {"temperature", "top_k", "top_p", "min_p", "top_h", "typical_p", "epsilon_cutoff", "eta_cutoff"}
)
# Fields this module does not reproduce, with the values that leave generation unchanged.
_NEUTRAL: dict[str, tuple[object, ...]] = {
    "do_sample": (None, False),
    "num_return_sequences": (None, 1),
    "bad_words_ids": (None,),
    "forced_bos_token_id": (None,),
    "forced_eos_token_id": (None,),
    "remove_invalid_values": (None, False),
    "renormalize_logits": (None, False),
    "exponential_decay_length_penalty": (None,),
    "suppress_tokens": (None, []),
    "begin_suppress_tokens": (None, []),
    "sequence_bias": (None,),
    "guidance_scale": (None, 1, 1.0),
    "watermarking_config": (None,),
    "encoder_repetition_penalty": (None, 1, 1.0),
    "encoder_no_repeat_ngram_size": (None, 0),
    "token_healing": (None, False),
    "max_time": (None,),
    "stop_strings": (None,),
    "low_memory": (None, False),
    "penalty_alpha": (None,),
    "dola_layers": (None,),
    "diversity_penalty": (None, 0, 0.0),
    "num_beam_groups": (None, 1),
    "constraints": (None,),
    "force_words_ids": (None,),
    "use_mtp": (None, False),
    "prompt_lookup_num_tokens": (None,),
    "assistant_early_exit": (None,),
    "is_assistant": (None, False),
}


def _same(value: object, neutral: object) -> bool:
    """JSON equality without Python's True == 1."""
    if isinstance(value, bool) or isinstance(neutral, bool):
        return value is neutral
    return type(value) in (int, float, list, type(None)) and value == neutral


def _int(name: str, value: object, *, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name}: expected an int, got {value!r}")
    if int(value) < lo:
        raise ValueError(f"{name}: expected an int >= {lo}, got {int(value)}")
    return int(value)


def _token_id(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < 0:
        raise ValueError(f"{name}: expected a token id (an int >= 0), got {value!r}")
    return int(value)


def _float(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name}: expected a number, got {value!r}")
    if not math.isfinite(float(value)):
        raise ValueError(f"{name}: expected a finite number, got {value!r}")
    return float(value)


# ------------------------------------------------------------------------------ helpers


def _max_length(cfg: GenerationConfig, max_new_tokens: int | None) -> int:
    """HF's max_length: the start token plus max_new_tokens, if given (it takes precedence)."""
    if max_new_tokens is None:
        return cfg.max_length
    return 1 + _int("max_new_tokens", max_new_tokens, lo=1)


def _batch(state: State) -> int:
    if not state:
        raise ValueError("state: expected at least one batch-first array, got an empty dict")
    return int(next(iter(state.values())).shape[0])


def _logits(logits: np.ndarray, rows: int) -> FloatArray:
    """The step's logits as a fresh float32 (rows, V) array (the processors write into it)."""
    x = np.array(logits, dtype=np.float32)  # a copy: HF copies too (`.to(copy=True)`)
    if x.ndim != 2 or x.shape[0] != rows:
        raise ValueError(f"step: expected logits of shape ({rows}, V), got {x.shape}")
    if np.isnan(x).any():
        raise ValueError("step: the logits hold NaN (no token order is defined)")
    return x


def _topk(x: FloatArray, k: int) -> tuple[FloatArray, IntArray]:
    """Row-wise k largest values of x (R, M), descending, ties to the lower index.

    A partition finds the k-th largest value t; only the entries >= t are sorted (more than
    k where t is tied, e.g. beams masked to -1e9 at the first step)."""
    r, m = x.shape
    if k < m:
        t = np.partition(x, m - k, axis=-1)[:, m - k]  # (R,) the k-th largest
        rows, cols = np.nonzero(x >= t[:, None])  # row-major: rows ascending
    else:
        rows, cols = np.repeat(np.arange(r), m), np.tile(np.arange(m), r)
    vals = x[rows, cols]
    order = np.lexsort((cols, -vals, rows))  # by row, then value descending, then index
    rows, cols = rows[order], cols[order]
    counts = np.bincount(rows, minlength=r)
    rank = np.arange(rows.size) - np.repeat(np.cumsum(counts) - counts, counts)
    idx = cols[rank < k].reshape(r, k).astype(np.int64)
    return np.take_along_axis(x, idx, -1), idx


def _process(ids: IntArray, scores: FloatArray, cfg: GenerationConfig) -> FloatArray:
    """The default logits processors, in _get_logits_processor's order (in place where
    they can: the masks).

    ids: (R, T) the sequences so far (start token included); scores: (R, V) float32."""
    r, v = scores.shape
    t = ids.shape[1]
    rows = np.arange(r)[:, None]
    if cfg.repetition_penalty != 1.0:  # RepetitionPenaltyLogitsProcessor
        # every token of the sequence (the start token too): x < 0 -> x * p, else x / p
        p = np.float32(cfg.repetition_penalty)
        seen = np.zeros((r, v + 1), bool)
        seen[rows, np.minimum(ids, v)] = True  # ids past the logits go to a spare column
        penalised = np.where(scores < 0, scores * p, scores / p)
        scores = np.where(seen[:, :v], penalised, scores).astype(np.float32, copy=False)
    n = cfg.no_repeat_ngram_size
    if n > 0 and t >= n:  # NoRepeatNGramLogitsProcessor
        # a window (an n-gram seen) whose first n-1 tokens are the current suffix bans its last
        windows = sliding_window_view(ids, n, axis=1)  # (R, T - n + 1, n)
        suffix = ids[:, t + 1 - n :]  # (R, n - 1)
        matches = (windows[..., :-1] == suffix[:, None, :]).all(-1)  # (R, T - n + 1)
        banned = np.zeros((r, v + 1), bool)
        banned[rows, np.where(matches, np.minimum(windows[..., -1], v), v)] = True
        scores[banned[:, :v]] = -np.inf
    if t < cfg.min_length and cfg.eos_token_id:  # MinLengthLogitsProcessor
        eos = [i for i in cfg.eos_token_id if i < v]
        scores[:, eos] = -np.inf
    return scores


def cut_at_eos(ids: list[int], eos: tuple[int, ...]) -> list[int]:
    """Generated ids up to (excluding) the first <eos>."""
    for j, i in enumerate(ids):
        if i in eos:
            return ids[:j]
    return ids


# ------------------------------------------------------------------------------- greedy


def greedy(
    step: StepFn, state: State, cfg: GenerationConfig, max_new_tokens: int | None = None
) -> DecodeResult:
    """HF greedy decoding (``_sample``, do_sample=False) of a batch.

    max_new_tokens: overrides ``cfg.max_length`` (``1 + max_new_tokens``), as generate's does.
    Returns per input the generated ids up to (excluding) the first <eos>; scores (B,): the
    sum of the chosen tokens' log-probabilities under the processed logits (<eos> included;
    HF's ``compute_transition_scores(..., normalize_logits=True)`` summed); attention per
    input (len + 1, N) (len where no <eos> came), the step's attention at each token.
    """
    max_length = _max_length(cfg, max_new_tokens)
    b = _batch(state)
    eos = np.asarray(cfg.eos_token_id, np.int64)
    pad = cfg.pad_id
    ids = np.zeros((b, max_length), np.int64)
    ids[:, 0] = cfg.decoder_start_token_id
    cur = 1  # tokens in ids so far
    unfinished = np.ones(b, bool)
    score = np.zeros(b, np.float32)
    atts = []
    rows = np.arange(b)
    while True:
        logits, state, att = step(ids[:, cur - 1].copy(), state)
        x = _process(ids[:, :cur], _logits(logits, b), cfg)  # (B, V)
        nxt = x.argmax(-1)  # the first of equal maxima, as torch.argmax
        logp = ops.log_softmax(x)
        score += np.where(unfinished, logp[rows, nxt], np.float32(0.0))
        if eos.size:  # finished rows emit <pad>
            assert pad is not None
            nxt = np.where(unfinished, nxt, pad)
        ids[:, cur] = nxt
        cur += 1
        atts.append(np.asarray(att))
        # EosTokenCriteria | MaxLengthCriteria
        unfinished &= ~(np.isin(nxt, eos) | (cur >= max_length))
        if not unfinished.any():
            break
    att_all = np.stack(atts, 1)  # (B, T, N)
    tokens = [cut_at_eos(s[1:cur].tolist(), cfg.eos_token_id) for s in ids]
    return DecodeResult(tokens, score, [att_all[i, : len(t) + 1] for i, t in enumerate(tokens)])


# -------------------------------------------------------------------------- beam search


def beam_search(
    step: StepFn,
    state: State,
    cfg: GenerationConfig,
    max_new_tokens: int | None = None,
    num_beams: int | None = None,
    constant: frozenset[str] = frozenset(),
) -> DecodeResult:
    """HF beam search (``_beam_search``, do_sample=False) of a batch; beams live in a (B*K)
    batch, as there.

    max_new_tokens, num_beams: override ``cfg.max_length`` (``1 + max_new_tokens``) and
    ``cfg.num_beams``, as generate's arguments do; num_beams >= 2 (HF decodes 1 greedily:
    :func:`generate` dispatches). constant: state entries the step passes through unchanged
    (cross-attention K/V): repeated to B*K once and never reordered; every other entry is
    reordered by the source beam at each step (the KV cache's reorder).

    Returns per input the best finished hypothesis's ids up to (excluding) <eos>; scores (B,)
    HF's ``sequences_scores`` (length-penalised); attention per input (len + 1, N) (len where
    no <eos> came), the step's attention at each of the hypothesis's tokens.
    """
    max_length = _max_length(cfg, max_new_tokens)
    k = cfg.num_beams if num_beams is None else _int("num_beams", num_beams, lo=1)
    if k < 2:
        raise ValueError(
            f"num_beams: beam search needs at least 2, got {k} (transformers decodes one beam "
            "greedily: call greedy(), or generate(), which dispatches)"
        )
    b = _batch(state)
    eos = np.asarray(cfg.eos_token_id, np.int64)
    lp = cfg.length_penalty
    early = cfg.early_stopping
    prompt = 1  # decoder_prompt_len: the start token
    # keep enough candidates that num_beams unfinished ones remain if the best all end
    keep = max(2, 1 + eos.size) * k
    top_num_beam_mask = np.arange(keep) < k  # (keep,) only these may become finished

    state = {n: np.repeat(v, k, axis=0) for n, v in state.items()}  # (B*K, ...)
    # after a hypothesis's end (never part of the tokens): HF's `pad or eos[0]` (so pad id 0
    # fills with eos[0]), -1 without eos
    fill = (cfg.pad_id or int(eos[0])) if eos.size else -1
    running_seq = np.full((b, k, max_length), fill, np.int64)  # (B, K, L)
    running_seq[:, :, 0] = cfg.decoder_start_token_id
    seq = running_seq.copy()  # the finished hypotheses
    running_scores = np.zeros((b, k), np.float32)
    running_scores[:, 1:] = _NEG  # the beams start equal: only the first one expands
    beam_scores = np.full((b, k), _NEG, np.float32)
    finished = np.zeros((b, k), bool)  # is_sent_finished
    unsatisfied = np.ones((b, 1), bool)  # is_early_stop_heuristic_unsatisfied
    # per step, the (B*K) row each hypothesis's token came from (for the attention)
    running_rows = np.full((b, k, max_length - prompt), -1, np.int64)
    rows_of = running_rows.copy()
    offset = (np.arange(b) * k)[:, None]  # (B, 1) a batch item's first row
    atts: list[np.ndarray] = []
    cur = prompt
    while True:
        logits, state, att = step(running_seq[:, :, cur - 1].reshape(-1), state)
        atts.append(np.asarray(att))
        logp = ops.log_softmax(_logits(logits, b * k))  # (B*K, V)
        logp = _process(running_seq[:, :, :cur].reshape(b * k, cur), logp, cfg)
        v = logp.shape[-1]
        if keep > k * v:  # torch.topk would fail too
            raise ValueError(f"step: {v} logits per beam are too few for {k} beams ({keep} kept)")
        acc = (logp.reshape(b, k, v) + running_scores[:, :, None]).reshape(b, k * v)

        # _get_top_k_continuations: the best `keep` of all beams' continuations
        topk_scores, topk_idx = _topk(acc, keep)  # (B, 2K)
        src = topk_idx // v  # (B, 2K) source beam
        topk_seq = np.take_along_axis(running_seq, src[:, :, None], 1)  # (B, 2K, L)
        topk_seq[:, :, cur] = topk_idx % v
        topk_rows = np.take_along_axis(running_rows, src[:, :, None], 1)
        topk_rows[:, :, cur - prompt] = src + offset

        # stopping criteria of each continuation: <eos>, or max_length reached
        hits = np.isin(topk_seq[:, :, cur], eos) | (cur + 1 >= max_length)  # (B, 2K)

        # _get_running_beams_for_next_iteration: the best K that did not stop
        topk_running = topk_scores + hits.astype(np.float32) * _NEG
        _, nxt = _topk(topk_running, k)  # (B, K)
        running_seq = np.take_along_axis(topk_seq, nxt[:, :, None], 1)
        running_scores = np.take_along_axis(topk_running, nxt, 1)
        running_rows = np.take_along_axis(topk_rows, nxt[:, :, None], 1)

        # _update_finished_beams: the top K continuations that stopped join the finished set
        # if they beat its worst; length penalty on the generated length (<eos> included)
        just_finished = hits & top_num_beam_mask[None, :]
        cand = topk_scores / np.float32(float(cur + 1 - prompt) ** lp)
        full = finished.all(-1, keepdims=True) & (early is True)  # no room once all done
        cand = cand + full.astype(np.float32) * _NEG
        cand = cand + (~unsatisfied).astype(np.float32) * _NEG  # no improvement possible
        cand = cand + (~just_finished).astype(np.float32) * _NEG  # still running
        merged_scores = np.concatenate([beam_scores, cand], 1)  # (B, 3K)
        _, best = _topk(merged_scores, k)
        seq = np.take_along_axis(np.concatenate([seq, topk_seq], 1), best[:, :, None], 1)
        beam_scores = np.take_along_axis(merged_scores, best, 1)
        rows_of = np.take_along_axis(np.concatenate([rows_of, topk_rows], 1), best[:, :, None], 1)
        finished = np.take_along_axis(np.concatenate([finished, just_finished], 1), best, 1)

        cur += 1
        # _check_early_stop_heuristic: can a running beam still beat the worst finished one?
        if early == "never" and lp > 0.0:
            best_len = max_length - prompt
        else:
            best_len = cur - prompt
        best_possible = running_scores[:, :1] / np.float32(float(best_len) ** lp)  # (B, 1)
        worst = np.where(finished, beam_scores.min(-1, keepdims=True), _NEG)  # (B, K)
        unsatisfied = unsatisfied & (best_possible > worst).any(-1, keepdims=True)
        # _beam_search_has_unfinished_sequences
        improvement_possible = bool(unsatisfied.any())
        open_beam = not (bool(finished.all()) and early is True)
        valid_continuations = not bool(hits.all())
        if not (improvement_possible and open_beam and valid_continuations):
            break
        # the next step continues the running beams: reorder their state (the KV cache)
        src_rows = running_rows[:, :, cur - 1 - prompt].reshape(-1)  # (B*K,)
        state = {n: (s if n in constant else s[src_rows]) for n, s in state.items()}

    # the best finished hypothesis (the finished set is sorted by score)
    tokens = [cut_at_eos(seq[i, 0, prompt:cur].tolist(), cfg.eos_token_id) for i in range(b)]
    attention = []
    for i, t in enumerate(tokens):
        n = min(len(t) + 1, cur - prompt)
        r = rows_of[i, 0, :n]
        attention.append(np.stack([atts[j][r[j]] for j in range(n)]))
    return DecodeResult(tokens, beam_scores[:, 0].copy(), attention)


def generate(
    step: StepFn,
    state: State,
    cfg: GenerationConfig,
    max_new_tokens: int | None = None,
    num_beams: int | None = None,
    constant: frozenset[str] = frozenset(),
) -> DecodeResult:
    """What ``model.generate`` runs for `cfg` (num_beams, max_new_tokens: overrides, as
    generate's arguments): greedy for num_beams == 1, else beam search."""
    k = cfg.num_beams if num_beams is None else _int("num_beams", num_beams, lo=1)
    if k == 1:
        return greedy(step, state, cfg, max_new_tokens)
    return beam_search(step, state, cfg, max_new_tokens, k, constant)
