"""Memory: a dataset shared through Ray's object store against a copy per trial."""
