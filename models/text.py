"""Real English sentences for calibration, benchmarks and quality tests, with no download.

The source is the Python reference manual's topic help that ships with CPython
(`pydoc_data.topics.topics`): prose written by people, always installed, identical on every machine
with the same Python version. We drop headings, tables and grammar rules, split the rest into
sentences and keep only the ones that look like clean English (no code characters, balanced quotes).

`calib` and `eval` are disjoint: a sentence belongs to `eval` when the first byte of its SHA-1 is
below 52 (about 20 % of sentences), otherwise to `calib`. The split depends only on the text of the
sentence, so it is stable whatever the word-count filters are.
"""

from __future__ import annotations

import functools
import hashlib
import random
import re
from typing import Any, Literal

__all__ = ["Split", "sentences", "token_batches"]

Split = Literal["all", "calib", "eval"]
_SPLITS = ("all", "calib", "eval")
_EVAL_BYTE_BELOW = 52  # ~20 % of sentences go to "eval"

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(])")
_HEADING_RULE = re.compile(r"^[*=\-~^]{3,}$")
# Characters that mark code, markup or formulas rather than prose.
_CODE_CHARS = re.compile(r"[{}\[\]<>=|\\_`@#$%^~*;]|::|\.\.\.|\(\)|\w\(|\w\.\w")
_ABBREVIATIONS = re.compile(r"\b(?:e\.g|i\.e|etc|vs|cf|Mr|Dr|St|No)\.$")


def _prose_paragraphs(text: str) -> list[str]:
    """Runs of non-blank lines at one indentation level, minus headings, tables and grammar rules.

    Code blocks are not recognised here (in this text they are indented like prose in definition
    lists); `_is_clean` rejects their lines later, since code does not read as a clean sentence.
    """
    paragraphs: list[str] = []
    current: list[str] = []
    indent: int | None = None
    for line in text.splitlines():
        stripped = line.strip()
        level = len(line) - len(line.lstrip())
        keep = bool(
            stripped
            and not _HEADING_RULE.match(stripped)
            and not stripped.startswith(("+", "|", ">>>", "..."))
            and "::=" not in stripped
        )
        if keep and level == indent:
            current.append(stripped)
            continue
        if current:
            paragraphs.append(" ".join(current))
        current, indent = ([stripped], level) if keep else ([], None)
    if current:
        paragraphs.append(" ".join(current))
    return paragraphs


def _split_sentences(paragraph: str) -> list[str]:
    pieces = _SENTENCE_END.split(paragraph)
    # Re-join splits made after an abbreviation ("e.g. Foo").
    merged: list[str] = []
    for piece in pieces:
        if merged and _ABBREVIATIONS.search(merged[-1]):
            merged[-1] = f"{merged[-1]} {piece}"
        else:
            merged.append(piece)
    return merged


def _is_clean(sentence: str) -> bool:
    if not sentence[:1].isupper() or not sentence.endswith("."):
        return False
    if _CODE_CHARS.search(sentence):
        return False
    if sentence.count('"') % 2 or sentence.count("(") != sentence.count(")"):
        return False
    letters = sum(c.isalpha() or c.isspace() for c in sentence)
    return letters / len(sentence) >= 0.9


def _in_eval(sentence: str) -> bool:
    return hashlib.sha1(sentence.encode("utf-8")).digest()[0] < _EVAL_BYTE_BELOW


@functools.lru_cache(maxsize=1)
def _pool() -> tuple[tuple[str, int, bool], ...]:
    """Every clean sentence once, in source order: (sentence, word count, belongs to eval)."""
    from pydoc_data.topics import topics

    seen: set[str] = set()
    pool: list[tuple[str, int, bool]] = []
    for key in sorted(topics):
        for paragraph in _prose_paragraphs(topics[key]):
            for sentence in _split_sentences(paragraph):
                sentence = " ".join(sentence.split())
                if sentence in seen or not _is_clean(sentence):
                    continue
                seen.add(sentence)
                pool.append((sentence, len(sentence.split()), _in_eval(sentence)))
    return tuple(pool)


def sentences(
    n: int,
    *,
    seed: int = 0,
    min_words: int = 6,
    max_words: int = 40,
    split: Split = "all",
) -> list[str]:
    """Return `n` distinct real English sentences, chosen deterministically by `seed`.

    Args:
        n: how many sentences; raises ValueError when the filtered pool is smaller.
        seed: selects and orders the sentences; the same arguments always give the same list.
        min_words, max_words: inclusive bounds on the number of whitespace-separated words.
        split: "calib" and "eval" are disjoint subsets of "all" (split by a hash of the text).
    """
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {_SPLITS}, got {split!r}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if min_words < 1 or max_words < min_words:
        raise ValueError(f"need 1 <= min_words <= max_words, got min_words={min_words}, max_words={max_words}")
    candidates = [
        s
        for s, words, is_eval in _pool()
        if min_words <= words <= max_words and (split == "all" or is_eval == (split == "eval"))
    ]
    if n > len(candidates):
        raise ValueError(
            f"asked for {n} sentences but only {len(candidates)} match split={split!r}, "
            f"min_words={min_words}, max_words={max_words}"
        )
    return random.Random(seed).sample(candidates, n)


def token_batches(tokenizer: Any, texts: list[str], *, max_batch: int = 32, max_length: int = 128) -> list[tuple[Any, Any]]:
    """``(input_ids, attention_mask)`` int64 batches of sentences with the same token count (no padding,
    so no padding token enters calibration statistics or per-token fidelity), shortest first."""
    by_len: dict[int, list[str]] = {}
    for s in texts:
        by_len.setdefault(len(tokenizer(s, truncation=True, max_length=max_length)["input_ids"]), []).append(s)
    out = []
    for _, group in sorted(by_len.items()):
        for i in range(0, len(group), max_batch):
            enc = tokenizer(group[i : i + max_batch], truncation=True, max_length=max_length, return_tensors="pt")
            out.append((enc["input_ids"], enc["attention_mask"]))
    return out
