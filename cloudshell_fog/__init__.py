"""cloudshell-fog: a Twisted gateway that gives people a shell in their browser or terminal."""

__version__ = "0.1.0"
