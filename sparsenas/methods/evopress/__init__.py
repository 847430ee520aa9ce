"""EvoPress: evolutionary search over per-layer compression levels under an exact budget."""
