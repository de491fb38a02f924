"""prefpred: predict which of two chatbot responses a person will prefer (A, B or tie)."""

from prefpred.types import LABELS, DataError, Pair, Turn, UserError

__version__ = "0.1.0"
__all__ = ["LABELS", "DataError", "Pair", "Turn", "UserError", "__version__"]
