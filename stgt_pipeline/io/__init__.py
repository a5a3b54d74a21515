"""Files a stage reads and writes: atomic outputs, the dataset manifest, videos under a remote (s3://) root."""
