"""Reports shared by every method: statistics, tables, summary files and plots."""
