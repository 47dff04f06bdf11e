"""upft trainer: fine-tunes a model on a UPFT dataset (local build or Hub repo)."""
