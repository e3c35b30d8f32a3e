"""Word-level tokenizer, torch-free.

Text is lower-cased and split into words and single punctuation marks. The vocabulary file is
plain text, one token per line; the line number is the id. Ids 0-3 are always
``<pad>``, ``<bos>``, ``<eos>``, ``<unk>``.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

__all__ = ["BOS", "EOS", "PAD", "SPECIALS", "UNK", "Tokenizer", "split_words"]

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIALS: tuple[str, ...] = (PAD, BOS, EOS, UNK)

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?|[^\sa-z0-9]")


def split_words(text: str) -> list[str]:
    """'A red circle, left.' -> ['a', 'red', 'circle', ',', 'left', '.']"""
    return _WORD.findall(text.lower())


class Tokenizer:
    """Maps words to ids and back: ``Tokenizer.build``, then ``save``/``load``."""

    def __init__(self, tokens: Sequence[str]) -> None:
        if tuple(tokens[: len(SPECIALS)]) != SPECIALS:
            raise ValueError(f"the vocabulary must start with {SPECIALS}, got {tokens[:4]}")
        if len(set(tokens)) != len(tokens):
            raise ValueError("duplicate tokens in the vocabulary")
        self.itos: list[str] = list(tokens)
        self.stoi: dict[str, int] = {t: i for i, t in enumerate(self.itos)}

    pad_id = 0
    bos_id = 1
    eos_id = 2
    unk_id = 3

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
        return isinstance(other, Tokenizer) and self.itos == other.itos

    def __hash__(self) -> int:
        return hash(tuple(self.itos))

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
            words.append(self.itos[i] if 0 <= i < len(self.itos) else UNK)
        return " ".join(words)

    def save(self, path: str | Path) -> None:
        Path(path).write_text("\n".join(self.itos) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
        return cls([ln for ln in lines if ln != ""])
