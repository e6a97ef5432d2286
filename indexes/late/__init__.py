"""Late interaction: one vector per token, documents scored by MaxSim (ColBERT), searched PLAID-style.

The code lives in :mod:`indexes.late.index` for now; this package is being split into one file per idea
(issue 23), and re-exports the public names.
"""

from indexes.late.index import (  # noqa: F401
    CENTROIDS_PER_SQRT_TOKEN,
    LateInteractionIndex,
    LateRerankIndex,
    MaxSimReranker,
    TokenEncoder,
    _segment_maxsim,
    _TokenStore,
    default_nlist,
    is_colbert_checkpoint,
    maxsim,
    text_of,
)
