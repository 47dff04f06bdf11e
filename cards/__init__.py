"""Dataset-card templates, shipped as package data (imported as ``builder.cards``)."""
