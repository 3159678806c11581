"""Registered backends."""
