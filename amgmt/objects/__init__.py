"""The read side: resolving names to objects, status, download and extract, delete, listings and statistics.

It reads what uploads recorded and never moves an original."""
