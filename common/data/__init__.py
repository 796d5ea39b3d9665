"""Local data: built-in datasets, the data schema, tabular encoding, partitioning, what statistics may disclose."""
