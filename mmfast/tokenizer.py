"""Word-level tokenizer, torch-free.

Text is lower-cased and split into words and single punctuation marks. The vocabulary file is
plain text, one token per line; the line number is the id.

Special tokens are defined here once: :class:`SpecialTokens` names them and holds their ids.
A vocabulary this module builds starts with ``<pad>``, ``<bos>``, ``<eos>``, ``<unk>``
(:data:`SPECIALS`), so their ids are :data:`WORD_LEVEL` (0-3). A bundle's manifest records the
ids of its vocabulary (``special_tokens``); the runtime's tokenizer and decoding take them from
there, so a vocabulary with other ids decodes correctly.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

__all__ = ["SPECIALS", "WORD_LEVEL", "SpecialTokens", "Tokenizer", "split_words"]


@dataclass(frozen=True)
class SpecialTokens:
    """Ids of the special tokens of a vocabulary (a bundle's manifest ``special_tokens``).

    The decoding (:mod:`mmfast.decoding`) lets two share an id (GPT-2: bos = eos = 50256, for
    the Hugging Face tokenizers); a word-level vocabulary (:class:`Tokenizer`) holds each field
    ``x`` as its own token ``<x>`` at its id, and reading a bundle's vocabulary refuses ids that
    say otherwise (``BundleFormatError`` naming the file).
    """

    pad: int  # fills a batch's shorter sequences; never generated
    bos: int  # starts every sequence; the decoder's first input
    eos: int  # ends a sequence; decoding stops at it
    unk: int  # stands for a word the vocabulary lacks

    def __post_init__(self) -> None:
        for f in fields(self):
            i = getattr(self, f.name)
            if isinstance(i, bool) or not isinstance(i, int) or i < 0:
                raise ValueError(f"{f.name}: expected a token id (an int >= 0), got {i!r}")


# A vocabulary this module builds starts with these tokens, so their ids are their positions.
SPECIALS: tuple[str, ...] = tuple(f"<{f.name}>" for f in fields(SpecialTokens))
WORD_LEVEL = SpecialTokens(*range(len(SPECIALS)))

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?|[^\sa-z0-9]")


def split_words(text: str) -> list[str]:
    """'A red circle, left.' -> ['a', 'red', 'circle', ',', 'left', '.']"""
    return _WORD.findall(text.lower())


class Tokenizer:
    """Maps words to ids and back: ``Tokenizer.build``, then ``save``/``load``.

    special_tokens: where the vocabulary holds ``<pad>``, ``<bos>``, ``<eos>``, ``<unk>``
    (a bundle's manifest says; a built vocabulary has them first, :data:`WORD_LEVEL`).
    """

    def __init__(self, tokens: Sequence[str], special_tokens: SpecialTokens = WORD_LEVEL) -> None:
        for f in fields(special_tokens):
            i, want = getattr(special_tokens, f.name), f"<{f.name}>"
            if i >= len(tokens) or tokens[i] != want:
                # where the token is, never what the file holds there: no message quotes a file
                got = f"at id {tokens.index(want)}" if want in tokens else "nowhere"
                raise ValueError(
                    f"the vocabulary must hold {want} at id {i}, it holds it {got} "
                    f"({len(tokens)} tokens)"
                )
        if len(set(tokens)) != len(tokens):
            raise ValueError("duplicate tokens in the vocabulary")
        self.itos: list[str] = list(tokens)
        self.stoi: dict[str, int] = {t: i for i, t in enumerate(self.itos)}
        self.special_tokens = special_tokens
        self.pad_id = special_tokens.pad
        self.bos_id = special_tokens.bos
        self.eos_id = special_tokens.eos
        self.unk_id = special_tokens.unk

    @classmethod
    def build(
        cls, texts: Iterable[str], min_freq: int = 1, max_size: int | None = None
    ) -> Tokenizer:
        """Vocabulary of the words seen at least ``min_freq`` times, most frequent first
        (ties broken alphabetically, so the result does not depend on the input order)."""
        counts: Counter[str] = Counter()
        for t in texts:
            counts.update(split_words(t))
        words = sorted(
            (w for w, c in counts.items() if c >= min_freq and w not in SPECIALS),
            key=lambda w: (-counts[w], w),
        )
        if max_size is not None:
            words = words[: max(0, max_size - len(SPECIALS))]
        return cls([*SPECIALS, *words])

    def __len__(self) -> int:
        return len(self.itos)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Tokenizer)
            and self.itos == other.itos
            and self.special_tokens == other.special_tokens
        )

    def __hash__(self) -> int:
        return hash((tuple(self.itos), self.special_tokens))

    def encode(self, text: str, add_bos: bool = True, add_eos: bool = True) -> list[int]:
        ids = [self.stoi.get(w, self.unk_id) for w in split_words(text)]
        if add_bos:
            ids.insert(0, self.bos_id)
        if add_eos:
            ids.append(self.eos_id)
        return ids

    def decode(self, ids: Iterable[int], skip_special: bool = True) -> str:
        """Ids -> text; stops at the first ``<eos>`` when ``skip_special``."""
        words: list[str] = []
        for i in ids:
            i = int(i)
            if skip_special:
                if i == self.eos_id:
                    break
                if i in (self.pad_id, self.bos_id):
                    continue
            words.append(self.itos[i if 0 <= i < len(self.itos) else self.unk_id])
        return " ".join(words)

    def save(self, path: str | Path) -> None:
        Path(path).write_text("\n".join(self.itos) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path, special_tokens: SpecialTokens = WORD_LEVEL) -> Tokenizer:
        try:
            lines = Path(path).read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as e:  # its message would quote the bytes
            raise ValueError(f"the vocabulary is not UTF-8 text (at byte {e.start})") from None
        return cls([ln for ln in lines if ln != ""], special_tokens)
