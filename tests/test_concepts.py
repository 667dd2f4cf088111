"""The concept vocabulary: mined from captions, matched on whole tokens, saved and loaded intact."""

import json

import pyarrow.parquet as pq
import pytest

from cocu.curation.concepts.mining import build_vocabulary, caption_nouns
from cocu.curation.concepts.names import normalize_concept, prompt, tokens
from cocu.curation.concepts.vocabulary import Vocabulary
from cocu.curation.concepts.words import DEFAULT_STOPWORDS
from cocu.curation.core.errors import VocabularyError
from cocu.curation.core.shards import ShardError
from cocu.curation.inputs.synthetic import STUFF_NAMES, THING_NAMES
from cocu.curation.inputs.synthetic.captions import COLOURS, NUMBERS


def vocab(*concepts: str) -> Vocabulary:
    ordered = tuple(sorted(concepts))
    return Vocabulary(ordered, tuple(range(1, len(ordered) + 1)))


def read_column(folder, column):
    return [
        value
        for path in sorted(folder.glob("*.parquet"))
        for value in pq.read_table(path, columns=[column]).column(column).to_pylist()
    ]


@pytest.mark.slow
def test_synthetic_world_vocabulary_and_matching(small_world):
    """Mined from the web-style train captions, the vocabulary is exactly the world's 52 classes, and
    matching every caption gives exactly the concepts the truth sidecar says it names, in caption order."""
    root, _ = small_world
    captions = read_column(root / "train", "caption")
    named = read_column(root / "truth" / "train", "named")
    vocabulary = build_vocabulary(captions, min_count=5, progress=False)

    assert set(vocabulary.concepts) == set(THING_NAMES) | set(STUFF_NAMES)
    words = {word for concept in vocabulary.concepts for word in concept.split()}
    assert not words & (set(COLOURS) | {"small", "big", "little", "large"} | set(NUMBERS.values()))
    assert not any(word.isdigit() for word in words)
    assert sum(vocabulary.counts) >= sum(len(n) for n in named) * 0.9  # spaCy misses a few, never invents

    matched = vocabulary.match_many(captions)
    wrong = [(c, m, n) for c, m, n in zip(captions, matched, named) if m != n]
    assert not wrong, f"{len(wrong)} captions mismatch, first: {wrong[:3]}"
    assert vocabulary.match(captions[0]) == named[0]


def test_whole_tokens_only():
    v = vocab("car", "son", "box", "bus", "leaf", "fish", "person")
    assert v.match("a cardboard box next to a scar") == ["box"]
    assert v.match("a person and a car-sharing sign") == ["person"]
    assert v.match("my son's old CAR!") == ["son", "car"]
    assert v.match("cars, cars and more cars") == ["car"]


@pytest.mark.parametrize(
    "caption, expected",
    [
        ("two buses", ["bus"]),
        ("autumn leaves", ["leaf"]),
        ("three fish", ["fish"]),
        ("boxes of fish", ["box", "fish"]),
        ("a bus and a leaf", ["bus", "leaf"]),
        ("people", ["person"]),
    ],
)
def test_plurals_collapse_to_one_concept(caption, expected):
    assert vocab("bus", "leaf", "fish", "box", "person").match(caption) == expected


def test_tokens_and_normalisation():
    assert tokens("The dog's T-Shirt, 'quoted' close-up") == ["the", "dog", "t-shirt", "quoted", "close-up"]
    assert normalize_concept("Coffee Mugs") == "coffee mug"
    assert normalize_concept("T-Shirts") == "t-shirt"
    assert normalize_concept("Paris") == "paris"  # names outside the lexicon keep their s
    assert normalize_concept("--") == ""


def test_compounds_match_with_their_heads():
    v = vocab("coffee", "coffee mug", "mug", "tv monitor", "monitor", "chocolate chip cookie", "cookie")
    assert v.match("a coffee mug") == ["coffee", "coffee mug", "mug"]
    assert v.match("two Coffee Mugs on tv monitors") == ["coffee", "coffee mug", "mug", "tv monitor", "monitor"]
    assert v.match("chocolate chip cookies") == ["chocolate chip cookie", "cookie"]
    assert v.match("coffee and a mug") == ["coffee", "mug"]
    assert v.match("a tv") == []
    assert v.match_many(["a mug", None, "", "a cookie"]) == [["mug"], [], [], ["cookie"]]


def test_build_mines_compounds_and_drops_attributes_numbers_and_photo_words():
    captions = [
        "a coffee mug on a desk",
        "two small red coffee mugs",
        "stock photo of a coffee mug",
        "close-up of 3 coffee mugs",
        "a coffee mug seen from above",
        "the dog's bowl",
    ] * 2
    v = build_vocabulary(captions, min_count=2, progress=False)
    assert v.concepts == ("bowl", "coffee mug", "desk", "dog", "mug")
    assert v.counts[v.index("coffee mug")] == 10
    assert v.counts[v.index("mug")] == 10
    assert "photo" in DEFAULT_STOPWORDS and "stock photo" not in v
    unfiltered = build_vocabulary(captions, min_count=2, stopwords=(), stop_heads=(), attributes=(), progress=False)
    assert {"photo", "stock photo", "close-up"} <= set(unfiltered.concepts)


def test_min_count_counts_each_caption_once():
    captions = ["a cat and another cat"] * 5 + ["a dog"] * 4 + ["a coffee mug"] * 3 + ["a mug"] * 2
    v = build_vocabulary(captions, min_count=5, progress=False)
    assert dict(zip(v.concepts, v.counts)) == {"cat": 5, "mug": 5}
    v = build_vocabulary(captions, min_count=3, progress=False)
    assert dict(zip(v.concepts, v.counts)) == {"cat": 5, "coffee mug": 3, "dog": 4, "mug": 5}


def test_user_concepts_are_normalised_and_kept_even_if_rare():
    captions = ["a dog on the grass"] * 5 + ["two zebras", "a photo"]
    v = build_vocabulary(captions, min_count=5, user_concepts=["Zebras", "photo", "unicorn"], progress=False)
    assert dict(zip(v.concepts, v.counts)) == {"dog": 5, "grass": 5, "photo": 1, "unicorn": 0, "zebra": 1}
    with pytest.raises(ValueError, match="no letters"):
        build_vocabulary(captions, user_concepts=["?!"], progress=False)
    with pytest.raises(TypeError, match="caption 1"):
        build_vocabulary(["a dog", 7], progress=False)


def test_index_and_validation():
    v = vocab("coffee mug", "mug")
    assert v.index("mug") == 1 and v.index("Coffee Mugs") == 0
    with pytest.raises(KeyError, match="cup"):
        v.index("cup")
    with pytest.raises(ValueError, match="not canonical"):
        Vocabulary(("dogs",), (1,))
    with pytest.raises(ValueError, match="out of order"):
        Vocabulary(("mug", "cup"), (1, 1))
    with pytest.raises(ValueError, match="2 concepts but 1 counts"):
        Vocabulary(("cup", "mug"), (1,))


def test_save_load_round_trip_and_digest(tmp_path):
    v = vocab("coffee mug", "mug", "t-shirt", "café")
    path = tmp_path / "vocab.json"
    v.save(path)
    assert [p.name for p in tmp_path.iterdir()] == ["vocab.json"]  # no temporary left behind
    loaded = Vocabulary.load(path)
    assert loaded == v and loaded.digest() == v.digest() and len(v.digest()) == 64
    assert vocab("mug", "coffee mug", "café", "t-shirt").digest() == v.digest()  # content, not construction order
    assert Vocabulary(v.concepts, (9, *v.counts[1:])).digest() != v.digest()
    assert loaded.match("two coffee mugs at the café") == ["coffee mug", "mug", "café"]


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d.update(counts=[*d["counts"][:-1], 99]), "digest"),
        (lambda d: d.update(concepts=["dogs"], counts=[1]), "row 0: 'dogs' is not canonical"),
        (lambda d: d.update(normalization="old"), "rebuild the vocabulary"),
        (lambda d: d.update(format="other"), "not a vocabulary file"),
    ],
)
def test_load_refuses_inconsistent_files(tmp_path, edit, message):
    path = tmp_path / "vocab.json"
    vocab("cup", "mug").save(path)
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    with pytest.raises(VocabularyError, match=message) as err:
        Vocabulary.load(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    assert not isinstance(err.value, ShardError)  # a vocabulary is not a shard


def test_load_refuses_unreadable_files(tmp_path):
    path = tmp_path / "vocab.json"
    path.write_text('{"format": "cocu-voc')
    with pytest.raises(VocabularyError, match="not a readable vocabulary file"):
        Vocabulary.load(path)
    with pytest.raises(VocabularyError, match="no such file"):
        Vocabulary.load(tmp_path / "missing.json")


@pytest.mark.parametrize(
    "concept, template, expected",
    [
        ("apple", "a photo of a {}.", "a photo of an apple."),
        ("dogs", "a photo of a {}.", "a photo of a dog."),
        ("Umbrellas", "a photo of a {}.", "a photo of an umbrella."),
        ("unicorn", "a photo of a {}.", "a photo of a unicorn."),
        ("hour glass", "itap of a {}.", "itap of an hour glass."),
        ("egg", "a {} in a video game.", "an egg in a video game."),
        ("egg", "A {}.", "An egg."),
        ("cup", "a photo of an {}.", "a photo of a cup."),
        ("apple", "a photo of the {}.", "a photo of the apple."),
        ("leaves", "a bad photo of the {}.", "a bad photo of the leaf."),
        ("tv monitors", "a photo of a {}.", "a photo of a tv monitor."),
    ],
)
def test_prompt_grammar(concept, template, expected):
    assert prompt(concept, template) == expected


def test_prompt_rejects_empty_concepts_and_slotless_templates():
    with pytest.raises(ValueError, match="no letters"):
        prompt("!!")
    with pytest.raises(ValueError, match="slot"):
        prompt("dog", "a photo")


def test_caption_nouns():
    assert caption_nouns(
        [
            "Two brown dogs are playing with a red frisbee in the park.",
            None,
            "a man in a white t-shirt",
            "the children's toys",
        ]
    ) == [["dog", "frisbee", "park"], [], ["man", "t-shirt"], ["child", "toy"]]
