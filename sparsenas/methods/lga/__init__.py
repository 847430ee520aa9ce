"""The NTK / Label-Gradient Alignment study: what only this method needs."""
