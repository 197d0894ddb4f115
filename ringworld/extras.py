"""Optional dependencies, imported where they are used, with a one-line error that says what to install."""

from __future__ import annotations

from types import ModuleType

MISSING_TRANSFORMERS = "this needs Hugging Face transformers: pip install 'ringworld[hf]'"


def transformers_module() -> ModuleType:
    """The ``transformers`` package, or an ImportError that says in one line what to install."""
    try:
        import transformers
    except ImportError:
        raise ImportError(MISSING_TRANSFORMERS) from None
    return transformers
