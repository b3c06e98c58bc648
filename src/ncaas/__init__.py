"""ncaas: neuroscience analysis as a service."""

__version__ = "0.1.0"
__all__ = ["__version__"]
