"""Registered pooling."""
