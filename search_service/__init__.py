"""The search service for people and apps: the page and its API, writes, model upgrades (torch-free)."""
