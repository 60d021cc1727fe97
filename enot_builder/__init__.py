"""enot-builder: builds Erlang packages from git tags with enot and serves them."""

__version__ = "0.1.0"
