"""Fixtures for SegGPT tests: tiny random-weight models written in every checkpoint layout."""
