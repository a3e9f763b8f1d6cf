"""The targets the search benchmarks check, in one table (from ../shared/ANCHORS.md and the
issues that set them): ``GOALS`` a dataset's (metric, latency s) line a front model must reach
(None: no line, the benchmark reports only); ``CONCRETE_ML`` the best Concrete ML network
measured on the same split (test accuracy, warm latency s, what it was)."""

GOALS = {
    "circles": (0.88, 0.3),
    "digits": (0.97, 0.5),
    "breast_cancer": (0.958, 0.01),
    "wine": (0.978, 0.01),
    "classification6000": (None, None),
    "diabetes": ("ridge - 0.02", 0.3),
}

CONCRETE_ML = {
    "breast_cancer": (0.909, 10.7, "hand-tuned: 3 layers, x2, 4 bits"),
    "wine": (0.978, 11.2, "defaults, 3 layers"),
    "digits": (0.960, 2.2, "hand-tuned: 2 layers, x1, 2 bits"),
    "circles": (0.892, 1.09, "100 epochs, lr 0.01"),
}
