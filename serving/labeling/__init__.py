"""The labeling workspace."""
