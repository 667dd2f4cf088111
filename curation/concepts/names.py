"""Concept names: the one normalisation that mining and matching share, and the prompts that embed a concept.

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

import re

# Bump when tokens(), singular() or the canonical form change meaning: it is part of every digest,
# so banks built under an older normalisation are refused instead of silently mismatched.
NORMALIZATION = "cocu-concepts-1"

TOKEN = re.compile(r"(?<![^\W_]['’])[^\W_]+(?:-[^\W_]+)*")
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
SINGULAR_CACHE: dict[str, str] = {}  # read directly by Vocabulary.match_many, the hot loop of the bank's tables
_SINGULAR_CACHE_LIMIT = 1 << 20
_ARTICLE = re.compile(r"(?<![^\W_])([Aa])[Nn]? \{\}")


def tokens(text: str) -> list[str]:
    """Lowercase word tokens of ``text`` under the normalisation described in the module docstring."""
    return TOKEN.findall(text.lower())


def singular(word: str) -> str:
    """The singular of one lowercase token ("buses" -> "bus", "t-shirts" -> "t-shirt"), cached.

    Applied to any token, noun or not: matching has no POS tags, and both sides use this function.
    """
    cached = SINGULAR_CACHE.get(word)
    if cached is None:
        if len(SINGULAR_CACHE) >= _SINGULAR_CACHE_LIMIT:
            SINGULAR_CACHE.clear()
        cached = SINGULAR_CACHE[word] = _singular(word)
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
