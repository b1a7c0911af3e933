"""`python -m amgmt`. Guarded, imports included: worker processes may re-run the parent's main module."""

if __name__ == "__main__":
    from amgmt.cli import main

    main()
