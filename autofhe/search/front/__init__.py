"""After a trial: the Pareto front, its notes, its refinement and the pick that ships."""
