"""Crack classifier library."""
