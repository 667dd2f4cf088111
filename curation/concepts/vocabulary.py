"""The concept vocabulary: canonical concepts with their caption counts, whole-token caption matching, and its file.

A vocabulary file records the normalisation it was made under and a digest of its content, so a file from another
cocu or edited by hand is refused with one line instead of silently matching differently.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from cocu.curation.concepts.names import NORMALIZATION, SINGULAR_CACHE, TOKEN, normalize_concept, singular
from cocu.curation.core.errors import VocabularyError
from cocu.curation.core.shards import atomic_write_json

FILE_FORMAT = "cocu-vocabulary"


@dataclass(frozen=True, repr=False)
class Vocabulary:
    """Canonical concepts (sorted, unique) with the number of corpus captions that mention each."""

    concepts: tuple[str, ...]
    counts: tuple[int, ...]
    # Lookups derived from ``concepts`` in __post_init__: not arguments, not part of equality.
    _index: dict[str, int] = field(init=False, repr=False, compare=False)
    _prefixes: frozenset[str] = field(init=False, repr=False, compare=False)
    _max_words: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        concepts, counts = tuple(self.concepts), tuple(int(c) for c in self.counts)
        problem = _check(concepts, counts)
        if problem:
            row, text = problem
            raise ValueError(text if row is None else f"concept {row}: {text}")
        object.__setattr__(self, "concepts", concepts)
        object.__setattr__(self, "counts", counts)
        object.__setattr__(self, "_index", {c: i for i, c in enumerate(concepts)})
        # Every proper word prefix of a multi-word concept, as written (only a last word is singularised).
        prefixes = {" ".join(words[:k]) for words in (c.split(" ") for c in concepts) for k in range(1, len(words))}
        object.__setattr__(self, "_prefixes", frozenset(prefixes))
        object.__setattr__(self, "_max_words", max((c.count(" ") + 1 for c in concepts), default=0))

    def __len__(self) -> int:
        return len(self.concepts)

    def __contains__(self, concept: object) -> bool:
        return concept in self._index

    def __repr__(self) -> str:
        return f"Vocabulary({len(self)} concepts, digest={self.digest()[:12]})"

    def index(self, concept: str) -> int:
        """Row of ``concept`` (canonical, or any form that normalises to it: "Coffee Mugs")."""
        found = self._index.get(concept)
        if found is None:
            found = self._index.get(normalize_concept(concept))
        if found is None:
            raise KeyError(f"concept {concept!r} is not in the vocabulary")
        return found

    def match(self, caption: str | None) -> list[str]:
        """Concepts ``caption`` mentions, each once, by first start token and then length."""
        return self.match_many((caption,))[0]

    def match_many(self, captions: Iterable[str | None]) -> list[list[str]]:
        """``match`` for many captions; a missing caption (None) mentions nothing."""
        find, index, prefixes, longest = TOKEN.findall, self._index, self._prefixes, self._max_words
        cache_get = SINGULAR_CACHE.get
        out: list[list[str]] = []
        for caption in captions:
            found: list[str] = []
            if caption:
                words = find(caption.lower())
                n = len(words)
                for i, word in enumerate(words):
                    head = cache_get(word) or singular(word)
                    if head in index and head not in found:
                        found.append(head)
                    if word in prefixes:
                        key = word
                        for j in range(i + 1, min(n, i + longest)):
                            nxt = words[j]
                            candidate = key + " " + (cache_get(nxt) or singular(nxt))
                            if candidate in index and candidate not in found:
                                found.append(candidate)
                            key = key + " " + nxt
                            if key not in prefixes:
                                break
            out.append(found)
        return out

    def digest(self) -> str:
        """sha256 of the normalisation version, concepts and counts: what a bank manifest records."""
        cached = self.__dict__.get("_digest")
        if cached is None:
            canonical = json.dumps(
                {"normalization": NORMALIZATION, "concepts": list(self.concepts), "counts": list(self.counts)},
                ensure_ascii=False,
                separators=(",", ":"),
            )
            cached = hashlib.sha256(canonical.encode()).hexdigest()
            object.__setattr__(self, "_digest", cached)
        return cached

    def save(self, path: str | os.PathLike) -> None:
        """Write a small JSON file atomically (temporary name, then rename)."""
        atomic_write_json(
            path,
            {
                "format": FILE_FORMAT,
                "normalization": NORMALIZATION,
                "digest": self.digest(),
                "concepts": list(self.concepts),
                "counts": list(self.counts),
            },
        )

    @classmethod
    def load(cls, path: str | os.PathLike) -> Vocabulary:
        """Read a file written by ``save``; anything inconsistent is a one-line VocabularyError naming the file."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise VocabularyError(path, "no such file") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise VocabularyError(path, f"not a readable vocabulary file ({err})") from None
        if not isinstance(data, dict) or data.get("format") != FILE_FORMAT:
            raise VocabularyError(path, f"not a vocabulary file (expected format '{FILE_FORMAT}')")
        if data.get("normalization") != NORMALIZATION:
            raise VocabularyError(
                path,
                f"written under normalisation {data.get('normalization')!r}, this cocu uses "
                f"{NORMALIZATION!r}: rebuild the vocabulary",
            )
        concepts, counts = data.get("concepts"), data.get("counts")
        if not isinstance(concepts, list) or not isinstance(counts, list):
            raise VocabularyError(path, "'concepts' and 'counts' must be lists")
        if not all(isinstance(c, str) for c in concepts):
            raise VocabularyError(
                path, "a concept is not a string", row=next(i for i, c in enumerate(concepts) if not isinstance(c, str))
            )
        empty = next((i for i, c in enumerate(concepts) if not c.strip()), None)
        if empty is not None:
            raise VocabularyError(path, "a concept is empty (every concept needs a name)", row=empty)
        if not all(isinstance(c, int) and not isinstance(c, bool) for c in counts):
            raise VocabularyError(
                path,
                "a count is not an integer",
                row=next(i for i, c in enumerate(counts) if not isinstance(c, int) or isinstance(c, bool)),
            )
        problem = _check(tuple(concepts), tuple(counts))
        if problem:
            raise VocabularyError(path, problem[1], row=problem[0])
        vocabulary = cls(tuple(concepts), tuple(counts))
        if data.get("digest") != vocabulary.digest():
            raise VocabularyError(
                path,
                f"digest {data.get('digest')!r} does not match the content ({vocabulary.digest()}): edited by hand?",
            )
        return vocabulary


def _check(concepts: tuple[str, ...], counts: tuple[int, ...]) -> tuple[int | None, str] | None:
    """The first problem with a vocabulary's content as (row or None, message), or None."""
    if len(concepts) != len(counts):
        return None, f"{len(concepts)} concepts but {len(counts)} counts"
    previous = None
    for row, (concept, count) in enumerate(zip(concepts, counts)):
        canonical = normalize_concept(concept)
        if concept != canonical:
            return (
                row,
                f"{concept!r} is not canonical (expected {canonical!r})"
                if canonical
                else f"{concept!r} has no letters or digits",
            )
        if previous is not None and concept <= previous:
            return (
                row,
                f"{concept!r} is {'a duplicate' if concept == previous else 'out of order'} "
                f"(concepts must be sorted and unique)",
            )
        if count < 0:
            return row, f"negative count {count} for {concept!r}"
        previous = concept
    return None
