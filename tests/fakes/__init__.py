"""Fakes that speak real protocols (the fake ADB server) for tests that need no phone."""
