"""The small, fast study spec the search tests share (linear models, a few epochs)."""


def fast_spec(max_epochs: int) -> str:
    """A spec whose trials train in about a second: 1 layer, 2-4 bits, ``max_epochs``, one
    validation split (cross-validation, which trains a model per fold, has tests of its own)."""
    return f"""
[study]
max_key_size = "2GB"
folds = 1

[space]
n_w_bits = {{ low = 2, high = 4 }}
n_a_bits = {{ low = 2, high = 4 }}
n_accum_bits = ["none", 8, 10]
module__activation_function = ["ReLU", "Tanh"]

[fixed]
module__n_layers = 1
max_epochs = {max_epochs}
"""
