"""The text modes: which concepts fill a sample's K prompts, one object per mode.

A mode says which curated columns it reads (checked against each shard's schema before training), what it keeps
of each row as that row's *concept source*, and how it draws K concepts from a batch of sources
(``cocu.training.prompts``). The data module, the shard scan and the stream ask the mode; none of them branches
on its name. ``TEXT_MODES`` is the one table, by name.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

from cocu.curation.core.shards import STRING_LISTS, ShardError
from cocu.curation.inputs.synthetic.truth import Truth
from cocu.training.prompts import cycle_concepts, draw_cluster_guided, draw_uniform, take_top

_FLOATS = (pa.list_(pa.float32()), pa.list_(pa.float64()), pa.large_list(pa.float32()), pa.large_list(pa.float64()))
_INTS = (pa.list_(pa.int32()), pa.list_(pa.int64()), pa.large_list(pa.int32()), pa.large_list(pa.int64()))
Columns = Mapping[str, tuple[pa.DataType, ...]]
# share of the image a true concept must cover to be one of ``oracle-all``'s prompts: the world counts a concept
# present from 1.5 % (``WorldConfig.min_visible``), about one 8x8 patch of a 64 px image; 3 % is two
ORACLE_MIN_AREA = 0.03
ORACLE_TOP = 3  # ``oracle-top3``: the ideal curator at CoCu's K


@dataclass
class Admission:
    """One read batch on its way into the stream: the rows kept so far, and the counts a mode adds to."""

    batch: pa.RecordBatch
    path: str
    rows: np.ndarray  # shard row number of every batch row (for error messages)
    keys: list[str]
    captions: list[str | None]
    keep: list[bool]  # a mode may drop more rows (and count why)
    counts: Counter

    def column(self, name: str) -> list[Any]:
        return [value or [] for value in self.batch.column(name).to_pylist()]


class TextMode(ABC):
    """A mode's contract; subclasses fill in ``sources`` and ``choose``."""

    name: ClassVar[str]
    required: ClassVar[Columns] = {}  # curated columns every shard must have
    optional: ClassVar[Columns] = {}  # read when a shard has them
    needs_truth: ClassVar[bool] = False  # the synthetic world's truth sidecar gives the concepts
    needs_areas: ClassVar[bool] = False  # ... and each concept's share of the image (its ``areas`` column)

    def columns(self, schema_names: Sequence[str]) -> dict[str, tuple[pa.DataType, ...]]:
        """The curated columns to check and read in a shard with these columns."""
        return {**self.required, **{name: types for name, types in self.optional.items() if name in schema_names}}

    @abstractmethod
    def sources(self, admission: Admission, truth: Mapping[str, list[str]] | None) -> list[Any]:
        """Each row's concept source (what ``choose`` draws from)."""

    @abstractmethod
    def choose(self, sources: list[Any], k: int, rng: np.random.Generator) -> list[list[str]]:
        """Up to ``k`` concepts per row for one batch."""

    def prepare(self, shard_columns: Sequence[Sequence[str]]) -> None:
        """Load, before the loader forks its workers, what they would each load again (shared copy-on-write)."""
        return None  # most modes load nothing: only caption's spaCy is worth loading before the fork

    def from_truth(self, truth: Truth) -> dict[str, list[str]]:
        """key -> the true concepts this mode draws from (a mode with ``needs_truth``)."""
        return truth.present()

    def prompts_needed(self, truth: Mapping[str, list[str]]) -> int | None:
        """The fewest prompts (K) that hold what this mode must show of every row; None: any K will do."""
        return None

    def pad(self, chosen: list[list[str]], k: int) -> list[list[str]]:
        """Fill the slots of rows with fewer than ``k`` concepts; what is left, ``build_texts`` fills with the caption.

        The default leaves them all to the caption, as GroupViT and the CoCu release do.
        """
        return chosen


class CaptionMode(TextMode):
    """The GroupViT baseline: distinct nouns of the caption (``caption_concepts`` when curated, else spaCy)."""

    name: ClassVar[str] = "caption"
    optional: ClassVar[Columns] = {"caption_concepts": STRING_LISTS}

    def sources(self, admission: Admission, truth: Mapping[str, list[str]] | None) -> list[Any]:
        if "caption_concepts" in admission.batch.schema.names:
            return admission.column("caption_concepts")
        from cocu.curation.concepts.mining import caption_nouns  # spaCy: only for shards without curated columns

        kept = [i for i, keep in enumerate(admission.keep) if keep]
        nouns = iter(caption_nouns([admission.captions[i] for i in kept]))
        return [next(nouns) if keep else [] for keep in admission.keep]

    def choose(self, sources: list[Any], k: int, rng: np.random.Generator) -> list[list[str]]:
        return draw_uniform(sources, k, rng)

    def prepare(self, shard_columns: Sequence[Sequence[str]]) -> None:
        if any("caption_concepts" not in columns for columns in shard_columns):
            from cocu.curation.concepts.mining import load_nlp

            load_nlp()


class CocuTopMode(TextMode):
    """The released CoCu default: the first K curated concepts, best first; deterministic."""

    name: ClassVar[str] = "cocu-top"
    required: ClassVar[Columns] = {"cocu_concepts": STRING_LISTS}

    def sources(self, admission: Admission, truth: Mapping[str, list[str]] | None) -> list[Any]:
        return admission.column("cocu_concepts")

    def choose(self, sources: list[Any], k: int, rng: np.random.Generator) -> list[list[str]]:
        return take_top(sources, k)


class CocuClusterMode(TextMode):
    """The paper's cluster-guided sampling over the curated concepts, re-drawn every time a row is read."""

    name: ClassVar[str] = "cocu-cluster"
    required: ClassVar[Columns] = {"cocu_concepts": STRING_LISTS, "cocu_scores": _FLOATS, "cocu_clusters": _INTS}

    def sources(self, admission: Admission, truth: Mapping[str, list[str]] | None) -> list[Any]:
        triples = zip(
            admission.column("cocu_concepts"), admission.column("cocu_scores"), admission.column("cocu_clusters")
        )
        sources = []
        for i, (concepts, scores, clusters) in enumerate(triples):
            malformed = (
                len(scores) != len(concepts)
                or (clusters and len(clusters) != len(concepts))
                or not np.all(np.isfinite(np.asarray(scores, dtype=np.float64)))
            )
            if admission.keep[i] and malformed:
                admission.keep[i] = False
                admission.counts["skipped_malformed_concepts"] += 1
            sources.append((concepts, scores, clusters))
        return sources

    def choose(self, sources: list[Any], k: int, rng: np.random.Generator) -> list[list[str]]:
        concepts, scores, clusters = zip(*sources)
        return draw_cluster_guided(concepts, scores, clusters, k, rng)


class OracleMode(TextMode):
    """Up to K of the synthetic world's truly present concepts, drawn at random (needs the truth sidecar).

    Every concept the world counts present (from ``min_visible``, 1.5 % of the image), drawn anew each time: with
    more than K present, each is a prompt only K/n of the time. Kept for users; the benchmark runs ``oracle-all``
    and ``oracle-top3``.
    """

    name: ClassVar[str] = "oracle"
    needs_truth: ClassVar[bool] = True

    def sources(self, admission: Admission, truth: Mapping[str, list[str]] | None) -> list[Any]:
        if truth is None:
            raise ValueError(f"text_mode '{self.name}' needs the truth sidecar")
        sources = []
        for i, key in enumerate(admission.keys):
            if key not in truth:
                raise ShardError(
                    admission.path, f"key '{key}' has no row in the truth sidecar", row=int(admission.rows[i])
                )
            sources.append(truth[key])
        return sources

    def choose(self, sources: list[Any], k: int, rng: np.random.Generator) -> list[list[str]]:
        return draw_uniform(sources, k, rng)


class OracleAllMode(OracleMode):
    """Every true concept covering at least ``min_area`` of the image, all of them in every read, nothing else.

    K must hold the most such concepts of any image (``prompts_needed``; the data module refuses a smaller
    ``num_prompts``), and a row with fewer fills its other slots with its own concepts again, each slot with a
    template of its own (``pad``), never with the caption. A row without any such concept cannot be shown and is
    skipped (``skipped_no_true_concept``).
    """

    name: ClassVar[str] = "oracle-all"
    needs_areas: ClassVar[bool] = True
    min_area: ClassVar[float] = ORACLE_MIN_AREA

    def from_truth(self, truth: Truth) -> dict[str, list[str]]:
        return {key: [name for name, area in pairs if area >= self.min_area] for key, pairs in truth.by_area().items()}

    def sources(self, admission: Admission, truth: Mapping[str, list[str]] | None) -> list[Any]:
        sources = super().sources(admission, truth)
        for i, source in enumerate(sources):
            if admission.keep[i] and not source:
                admission.keep[i] = False
                admission.counts["skipped_no_true_concept"] += 1
        return sources

    def choose(self, sources: list[Any], k: int, rng: np.random.Generator) -> list[list[str]]:
        chosen = [list(dict.fromkeys(source)) for source in sources]
        if any(len(row) > k for row in chosen):
            raise ValueError(f"text_mode '{self.name}' needs num_prompts >= {max(map(len, chosen))}, got {k}")
        return chosen

    def prompts_needed(self, truth: Mapping[str, list[str]]) -> int | None:
        return max((len(set(concepts)) for concepts in truth.values()), default=0)

    def pad(self, chosen: list[list[str]], k: int) -> list[list[str]]:
        return cycle_concepts(chosen, k)


class OracleTopMode(OracleMode):
    """The ``ORACLE_TOP`` true concepts that cover most of the image, largest first: the ideal curator at CoCu's K.

    Deterministic like ``cocu-top``, and like it padded with the caption when an image shows fewer.
    """

    name: ClassVar[str] = f"oracle-top{ORACLE_TOP}"
    needs_areas: ClassVar[bool] = True

    def from_truth(self, truth: Truth) -> dict[str, list[str]]:
        return {key: [name for name, _ in pairs[:ORACLE_TOP]] for key, pairs in truth.by_area().items()}

    def choose(self, sources: list[Any], k: int, rng: np.random.Generator) -> list[list[str]]:
        return take_top(sources, k)


TEXT_MODES: dict[str, TextMode] = {
    mode.name: mode
    for mode in (CaptionMode(), CocuTopMode(), CocuClusterMode(), OracleMode(), OracleAllMode(), OracleTopMode())
}


def text_mode(name: str) -> TextMode:
    """The mode called ``name``; a ValueError that lists the modes otherwise."""
    try:
        return TEXT_MODES[name]
    except KeyError:
        raise ValueError(f"text_mode must be one of {', '.join(TEXT_MODES)}, got '{name}'") from None
