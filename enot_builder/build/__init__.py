"""A build in steps: source, project, releases, compile, artifact (builder.py runs them)."""

from .builder import Builder

__all__ = ["Builder"]
