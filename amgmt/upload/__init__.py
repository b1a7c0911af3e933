"""The write side: one entry through the eight stages (pipeline), many at once (batch), and the repair of what an
interrupted run left (recovery). It composes local/, s3/ and store/; it never prints."""
