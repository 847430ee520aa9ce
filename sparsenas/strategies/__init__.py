"""Search strategies: each plans units, runs them through the framework and summarises them."""

from sparsenas.strategies.base import STRATEGIES, Strategy, Summary

__all__ = ["STRATEGIES", "Strategy", "Summary"]
