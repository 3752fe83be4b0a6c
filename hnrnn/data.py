"""The human-numbers data of the lesson, generated in-process (no download).

Reproduces fastai v1's HUMAN_NUMBERS pipeline exactly:
- text: the English words for 1..7999 (train) and 8001..9999 (valid), one number a line,
  each split read as a single item: the lines joined by ", ";
- tokens: ``xxbos`` then the words and commas (the fastai tokenizer splits "one," into "one ,");
- vocab: built from the train tokens only: the special tokens first, then every token seen at
  least twice, by count descending, ties in first-seen order;
- ``LMLoader``: fastai's LanguageModelPreLoader: the stream is cut into ``bs`` rows (row i starts
  at ``int(T/bs*i)``), each batch reads ``bptt+1`` tokens per row (``y`` is ``x`` shifted by one),
  the next batch starts where the last one's ``x`` ended, and rows wrap around the stream's end.
"""
import math
import os
from collections import Counter
from typing import Iterator, List, Sequence, Tuple

import torch

SPECIAL_TOKENS = ["xxunk", "xxpad", "xxbos", "xxeos", "xxfld", "xxmaj", "xxup", "xxrep", "xxwrep"]
UNK, BOS = "xxunk", "xxbos"

_PUNCT = ",.;:!?\"'()"
_ONES = ["", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
         "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen",
         "eighteen", "nineteen"]
_TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]


def number_words(n: int) -> str:
    """English words for 1 <= n <= 9999, as in the dataset: 'nine thousand nine hundred ninety nine'."""
    if not 1 <= n <= 9999:
        raise ValueError(f"number_words covers 1..9999, got {n}")
    words = []
    if n >= 1000:
        words += [_ONES[n // 1000], "thousand"]
        n %= 1000
    if n >= 100:
        words += [_ONES[n // 100], "hundred"]
        n %= 100
    if n >= 20:
        words.append(_TENS[n // 10])
        n %= 10
    if n:
        words.append(_ONES[n])
    return " ".join(words)


def numbers_text(first: int, last: int) -> str:
    """One item: the numbers first..last in words, joined by ', ' (the lesson's ``readnums``)."""
    return ", ".join(number_words(n) for n in range(first, last + 1))


def tokenize(text: str) -> List[str]:
    """fastai v1's tokenization for plain text: xxbos first, punctuation split off, words
    lower-cased with fastai's xxmaj/xxup markers."""
    tokens = [BOS]
    for word in text.split():
        # Split leading/trailing punctuation into tokens of their own ("one," -> "one", ",").
        core = word.strip(_PUNCT)
        lead = word[: len(word) - len(word.lstrip(_PUNCT))]
        trail = word[len(word.rstrip(_PUNCT)):]
        tokens += list(lead)
        if core:
            # fastai's case rules: xxup before an all-caps word, xxmaj before a capitalised one.
            if len(core) > 1 and core.isupper():
                tokens.append("xxup")
            elif core[0].isupper():
                tokens.append("xxmaj")
            tokens.append(core.lower())
        tokens += list(trail)
    return tokens


def build_vocab(tokens: Sequence[str], min_freq: int = 2, max_vocab: int = 60000) -> List[str]:
    """fastai v1's Vocab.create: frequent tokens by count (ties: first seen), specials first."""
    counts = Counter(tokens)  # most_common keeps first-seen order among equal counts
    itos = [tok for tok, c in counts.most_common(max_vocab) if c >= min_freq]
    for tok in reversed(SPECIAL_TOKENS):
        if tok in itos:
            itos.remove(tok)
        itos.insert(0, tok)
    return itos[:max_vocab]


class TextData:
    """A tokenized train/valid pair with its vocab (what the lesson calls ``data``)."""

    def __init__(self, train_text: str, valid_text: str):
        train_tokens, valid_tokens = tokenize(train_text), tokenize(valid_text)
        self.vocab: List[str] = build_vocab(train_tokens)
        self.stoi = {tok: i for i, tok in enumerate(self.vocab)}
        self.train_ids = self.numericalize(train_tokens)
        self.valid_ids = self.numericalize(valid_tokens)

    def numericalize(self, tokens: Sequence[str]) -> torch.Tensor:
        unk = self.stoi[UNK]
        return torch.tensor([self.stoi.get(t, unk) for t in tokens], dtype=torch.int64)

    def textify(self, ids) -> str:
        """Token ids (tensor or sequence) back to their space-separated text."""
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        return " ".join(self.vocab[i] for i in ids)

    def __repr__(self):
        return (f"TextData(vocab={len(self.vocab)}, train_tokens={len(self.train_ids)}, "
                f"valid_tokens={len(self.valid_ids)})")


def human_numbers() -> TextData:
    """The lesson's data: train = 1..7999, valid = 8001..9999."""
    return TextData(numbers_text(1, 7999), numbers_text(8001, 9999))


def from_text_file(path: str, valid_fraction: float = 0.2) -> TextData:
    """A user's own text through the same pipeline: its lines joined by ', ' like ``readnums``,
    the last ``valid_fraction`` of the lines becoming the validation item."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"text file not found: {path}")
    if not os.path.isfile(path):
        raise ValueError(f"{path} is not a regular file")
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ValueError(f"cannot read {path}: {e.strerror or e}") from None
    if b"\x00" in raw:
        raise ValueError(f"{path} looks like a binary file (it contains NUL bytes); expected plain text")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 text: {e}") from None
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) < 2:
        raise ValueError(f"{path} needs at least two non-empty lines (train and valid), found {len(lines)}")
    n_valid = max(1, int(round(len(lines) * valid_fraction)))
    return TextData(", ".join(lines[:-n_valid]), ", ".join(lines[-n_valid:]))


class LMLoader:
    """fastai v1's language-model loader over one token stream.

    Iterating gives ``len(self)`` batches ``(x, y)`` of shape (bs, bptt), int64; every epoch
    (every ``iter()``) starts again at the rows' start positions, as the fastai Learner does.
    ``batch(k)`` gives the k-th batch of the endless stream, so ``batch(len(self))`` is what
    fastai returns when a loader is iterated again without being reset. With ``world_size``
    > 1, the loader of ``rank`` gives rows ``rank * bs/world_size`` to ``(rank+1) * bs/world_size - 1``
    of each of those batches.
    """

    def __init__(self, ids: torch.Tensor, bs: int = 64, bptt: int = 70, rank: int = 0, world_size: int = 1):
        ids = torch.as_tensor(ids)
        if ids.dim() != 1 or ids.numel() == 0:
            raise ValueError(f"LMLoader needs a non-empty 1-D token stream, got shape {tuple(ids.shape)}")
        if bs < 1 or bptt < 1:
            raise ValueError(f"bs and bptt must be positive, got bs={bs}, bptt={bptt}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in a world of {world_size} processes")
        if bs % world_size:
            raise ValueError(f"bs={bs} does not split evenly over {world_size} processes")
        self.ids, self.bs, self.bptt = ids.long(), bs, bptt
        total = ids.numel()
        # Row i starts at int(step * i) with a float step, exactly as fastai computes it.
        step = total / bs
        starts = torch.tensor([int(step * i) for i in range(bs)], dtype=torch.int64)
        # Data-parallel: this rank's contiguous share of the rows; the ranks together read
        # exactly the single-process batch, in the same number of batches.
        share = bs // world_size
        self.starts = starts[rank * share:(rank + 1) * share]
        # positions of batch 0's rows and their one-token-longer targets; batch k adds k * bptt
        self._window = self.starts[:, None] + torch.arange(bptt + 1, dtype=torch.int64)[None, :]

    def __len__(self) -> int:
        return math.ceil(self.ids.numel() / (self.bptt * self.bs))

    def batch(self, k: int) -> Tuple[torch.Tensor, torch.Tensor]:
        pos = (self._window + k * self.bptt) % self.ids.numel()
        rows = self.ids[pos]
        return rows[:, :-1], rows[:, 1:]

    def __iter__(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        for k in range(len(self)):
            yield self.batch(k)
