"""`python -m amgmt`."""

if __name__ == "__main__":
    from amgmt.cli import main

    main()
