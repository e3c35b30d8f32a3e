"""A Hugging Face tokenizer (``tokenizer.json``) behind the word-level tokenizer's interface,
run by the Rust ``tokenizers`` library: no torch, no transformers.

Decoding reproduces ``PreTrainedTokenizer.decode(ids, skip_special_tokens=True)``: the
library's decoder with special tokens skipped, then, when the model's tokenizer config asks
for it (``clean_up_tokenization_spaces``, recorded in the manifest at export), transformers'
clean-up of the spaces before punctuation and contractions.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from .tokenizer import SpecialTokens

__all__ = ["HFTokenizer", "clean_up_tokenization"]

# transformers' PreTrainedTokenizerBase.clean_up_tokenization, in its order
_CLEAN_UP = (
    (" .", "."),
    (" ?", "?"),
    (" !", "!"),
    (" ,", ","),
    (" ' ", "'"),
    (" n't", "n't"),
    (" 'm", "'m"),
    (" 's", "'s"),
    (" 've", "'ve"),
    (" 're", "'re"),
)


def clean_up_tokenization(text: str) -> str:
    for a, b in _CLEAN_UP:
        text = text.replace(a, b)
    return text


class HFTokenizer:
    """``tokenizer.json`` with a bundle's special-token ids (see :class:`SpecialTokens`)."""

    def __init__(
        self, path: str | Path, special_tokens: SpecialTokens, clean_up_spaces: bool = False
    ) -> None:
        from tokenizers import Tokenizer as _Backend  # the Rust library: imported when used

        try:
            self._tok = _Backend.from_file(str(path))
        except Exception as e:  # the library raises its own Exception for a bad file
            raise ValueError(f"not a tokenizers tokenizer.json ({e})") from None
        self.special_tokens = special_tokens
        self.pad_id, self.bos_id = special_tokens.pad, special_tokens.bos
        self.eos_id, self.unk_id = special_tokens.eos, special_tokens.unk
        self.clean_up_spaces = clean_up_spaces
        n = len(self)
        for name, i in vars(special_tokens).items():
            if i >= n:
                raise ValueError(f"special_tokens.{name} is id {i}, the tokenizer has {n} tokens")

    def __len__(self) -> int:
        return int(self._tok.get_vocab_size(with_added_tokens=True))

    def encode(
        self, text: str, add_bos: bool = True, add_eos: bool = True, max_length: int | None = None
    ) -> list[int]:
        """Ids of `text`, with the special tokens the tokenizer's post-processor adds when
        add_bos or add_eos (it decides which: BERT adds [CLS] and [SEP], GPT-2 none).

        max_length: at most this many ids, special tokens included, cut as transformers'
        ``truncation=True`` cuts: the text's tokens are cut first and the special tokens added
        after, so a text tower that pools at its end-of-text token still finds it."""
        special = add_bos or add_eos
        if max_length is None:
            ids: list[int] = self._tok.encode(text, add_special_tokens=special).ids
            return ids
        if max_length < 1:
            raise ValueError(f"max_length must be at least 1, got {max_length}")
        enc = self._tok.encode(text, add_special_tokens=False)
        room = max_length - (self._tok.num_special_tokens_to_add(False) if special else 0)
        if room < 0:
            raise ValueError(f"max_length {max_length} leaves no room for the special tokens")
        enc.truncate(room)
        if special:
            enc = self._tok.post_process(enc, add_special_tokens=True)
        out: list[int] = enc.ids
        return out

    def decode(self, ids: Iterable[int], skip_special: bool = True) -> str:
        """Ids -> text, as transformers decodes them (special tokens skipped)."""
        text: str = self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special)
        return clean_up_tokenization(text) if self.clean_up_spaces else text
