"""`amgmt benchmark`: data sets, the embedded local S3 server, the session's timed runs, the meter and the report.

It drives the upload library like a user would; nothing in the upload path imports it, and it never imports boto3."""
