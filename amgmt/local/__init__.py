"""The local side of an entry: its identity, packing it as tar.gz, moving it into the completed dir, the run lock.

Synchronous file-system work (callers run it in threads or worker processes); must not import anyio, S3 or the
store."""
