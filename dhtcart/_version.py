"""dhtcart's version, importable without importing the package's modules (the faces read it)."""

__version__ = "0.1.0"
