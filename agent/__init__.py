"""Stanch agent: local checks, guarded remediations, explainable decisions.

The agent stands alone. It never imports ``controlplane``; anything both sides need lives here.
"""

__version__ = "0.1.0"
