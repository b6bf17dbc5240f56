"""``python -m logitcache`` — the same CLI as the ``logitcache`` command (and torchrun-friendly)."""

from .cli import main

if __name__ == "__main__":
    main()
