"""MaxSim as a reranker: :class:`MaxSimReranker` reorders any hits by MaxSim, encoding their texts on the fly."""

from __future__ import annotations

from dataclasses import field

from indexes.late.encoder import TokenEncoder, query_vectors, text_of
from indexes.late.scoring import maxsim, top_positions
from rag.errors import InputError
from rag.registry import Component, declared_params
from rag.types import Hit


@declared_params
class MaxSimReranker(Component):
    """Reranks any hits by MaxSim with a token encoder, encoding the hits' texts on the fly (nothing cached).

    Offline with ``model="minilm"`` these are MiniLM token vectors, not a trained ColBERT.

        >>> reranker = MaxSimReranker()
        >>> reranker.rerank("what thins blood?", bm25_hits, k=3)      # doctest: +SKIP
    """

    role = "reranker"

    model: str = "minilm"
    max_length: int = 256
    batch_size: int = 32
    name: str = "maxsim"
    dtype: str = "float32"
    _encoder: TokenEncoder = field(init=False)  # built in __post_init__ (cheap: the model loads on first use)

    def __post_init__(self) -> None:
        self._encoder = TokenEncoder(
            self.model, max_length=self.max_length, batch_size=self.batch_size, dtype=self.dtype
        )

    def rerank(self, query: str, hits: list[Hit], k: int) -> list[Hit]:
        """The ``k`` best of ``hits`` by MaxSim, best first (ties keep the input order); a chunk id that
        appears more than once is scored once, at its first position."""
        if k < 1:
            raise InputError(f"reranker {self.name!r}: k must be at least 1, got {k}")
        if not isinstance(query, str):
            raise InputError(f"reranker {self.name!r}: query is a {type(query).__name__}, not a str")
        unique: dict[str, Hit] = {}
        for number, hit in enumerate(hits):
            if not isinstance(hit, Hit):
                raise InputError(f"reranker {self.name!r}: hit {number} is a {type(hit).__name__}, not a Hit")
            unique.setdefault(hit.chunk.id, hit)
        if not unique:
            return []
        (q,) = query_vectors(self._encoder, self.name, [query])
        chunks = [h.chunk for h in unique.values()]
        docs = self._encoder.encode_documents([text_of(c) for c in chunks])
        scores = maxsim(q, [d.reshape(-1, q.shape[1]) for d in docs])
        return [Hit(chunk=chunks[i], score=float(scores[i]), source=self.name) for i in top_positions(scores, k)]

    def warm_up(self) -> None:
        self._encoder.backend
