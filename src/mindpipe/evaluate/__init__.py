"""Metrics, the oracle and the comparison report."""
