"""The targets the search benchmarks check, in one table (from ../shared/ANCHORS.md and the
issues that set them): ``GOALS`` a dataset's (metric, latency s) line a front model must reach
(None: no line, the benchmark reports only); ``CONCRETE_ML`` the best Concrete ML network
measured on the same split (test accuracy, warm latency s, what it was)."""

GOALS = {
    "circles": (0.88, 0.3),
    "digits": (0.97, 0.5),
    "breast_cancer": (0.958, 0.01),
    "wine": (0.978, 0.01),
    "classification6000": ("float_mlp - 0.01", 0.5),  # issue 33
    "diabetes": ("ridge - 0.02", 0.3),
    # issue 33, run on their own: --datasets classification50000 --budget 20m
    "classification50000": ("float_mlp - 0.02", 1.0),
    "wide200": ("logistic", None),  # at any latency
}
#: Searched only when named (--datasets): their runs take 20 minutes each.
LARGE = ("classification50000", "wide200")
#: trials trained and scored (complete or stopped at a rung) per hour, where a line asks it
TRIALS_PER_HOUR = {"classification6000": 300, "classification50000": 450}

CONCRETE_ML = {
    "breast_cancer": (0.909, 10.7, "hand-tuned: 3 layers, x2, 4 bits"),
    "wine": (0.978, 11.2, "defaults, 3 layers"),
    "digits": (0.960, 2.2, "hand-tuned: 2 layers, x1, 2 bits"),
    "circles": (0.892, 1.09, "100 epochs, lr 0.01"),
}
