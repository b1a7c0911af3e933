"""amgmt: an async, concurrent, verified batch uploader of media folders to S3."""

__version__ = "0.1.0"
