"""What is specific to each method (everything shared lives in the floors below)."""
