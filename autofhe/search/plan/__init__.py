"""Before the first trial: the spec a user writes, the space it opens, the probe of the data."""
