"""Before training a trial: its circuit's price and the constraints that price must meet."""
