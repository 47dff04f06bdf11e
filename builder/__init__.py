"""upft dataset builder: recipe -> questions -> sampled prefixes -> a Hub-ready dataset directory.

The pipeline reads top to bottom through the modules of this package:
``recipe`` (validated config) -> ``sources`` (questions) -> ``sampling`` (vLLM or transformers)
-> ``voting`` (token-level consensus) -> ``mixture`` (prefix + full-trace rows) -> ``writer``
(parquet, manifest, card) -> ``hub`` (publishing).
"""

__version__ = "0.2.0"
