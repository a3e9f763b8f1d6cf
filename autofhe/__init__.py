"""autofhe: find, train, compile and ship neural networks that run on encrypted data."""

from autofhe.errors import AutofheError, AutofheWarning
from autofhe.nn.estimators import NeuralNetClassifier, NeuralNetRegressor

__version__ = "0.1.0"

__all__ = [
    "AutofheError",
    "AutofheWarning",
    "NeuralNetClassifier",
    "NeuralNetRegressor",
    "__version__",
]
