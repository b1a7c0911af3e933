"""`python -m amgmt`. Guarded: worker processes re-import the parent's main module."""

from amgmt.cli import main

if __name__ == "__main__":
    main()
