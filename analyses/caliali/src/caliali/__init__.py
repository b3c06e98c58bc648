"""caliali: multi-session one-photon calcium imaging in bounded memory."""

__version__ = "0.1.0"
__all__ = ["__version__"]
