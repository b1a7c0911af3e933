"""The S3 boundary: the only package that imports aioboto3, aiobotocore, botocore or aiohttp.

Owns the client, error translation, the retry policy, the multipart loop and the direct transport; it knows nothing
of entries, records or the completed dir, and raises only amgmt's own errors."""
