"""Example task types of the reference project."""
