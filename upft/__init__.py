"""upft trainer: fine-tunes a model on a UPFT dataset (local build or Hub repo).

The ``upft-train`` command (``upft.cli``) reads top to bottom through the modules:
``config`` (paper defaults < YAML file < flags) -> ``data`` (open the dataset, turn mixture rows
into masked sequences) -> ``train`` (transformers ``Trainer``, optional LoRA, save a plain
model folder) -> ``output`` (model card, ``train_summary.json``, optional Hub push).
"""
