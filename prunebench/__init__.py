"""prunebench: neural-network pruning methods compared side by side on identical training protocols."""

__version__ = "0.1.0"
