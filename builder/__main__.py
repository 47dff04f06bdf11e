"""``python -m builder RECIPE``: the same as ``upft-build RECIPE``."""

from builder.cli import build_entry

if __name__ == "__main__":  # vLLM starts worker processes that re-import the main module
    build_entry()
