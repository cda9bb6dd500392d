"""Shared helpers for the test suite (real peers on loopback, synthetic data)."""
