"""Fixtures for SAM tests: tiny random-weight models written in every checkpoint layout."""
