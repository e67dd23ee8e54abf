"""``python -m taskfleet``: the same as the ``taskfleet`` command."""

from ._cli import main

if __name__ == "__main__":
    raise SystemExit(main())
