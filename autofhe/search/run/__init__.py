"""A search as processes: the study, its workers, their trial loop and heartbeats."""
