"""Search spaces: the SearchSpace protocol and the spaces the methods search."""
