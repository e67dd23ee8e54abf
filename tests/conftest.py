"""Shared fixtures. Slow tests (real processes, real servers) are marked `slow`."""
