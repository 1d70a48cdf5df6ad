"""Entry point for ``python -m sacseg`` (and ``torchrun -m sacseg``)."""

from sacseg.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
