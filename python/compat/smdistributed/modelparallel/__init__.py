from smp import __version__  # noqa: F401  (scripts print it; HF gates on >= 1.10)
