"""`amgmt benchmark`: data sets, the embedded local S3 server, timing and the report.

It drives the upload library like a user would; nothing in the upload path imports it."""
