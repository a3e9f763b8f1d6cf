"""autofhe: find, train, compile and ship neural networks that run on encrypted data."""

from autofhe.errors import AutofheError, AutofheWarning

__version__ = "0.1.0"

__all__ = [
    "AutofheError",
    "AutofheWarning",
    "NeuralNetClassifier",
    "NeuralNetRegressor",
    "__version__",
]

#: names imported on first use: the estimators need torch, which takes seconds to import
_LAZY = {
    "NeuralNetClassifier": "autofhe.nn.estimators",
    "NeuralNetRegressor": "autofhe.nn.estimators",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'autofhe' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
