"""One trial: train with rungs, compile, simulate, measure (quietly) under encryption."""
