"""Reference model zoo used by tests, benchmarks and the demo (not shipped in the wheel)."""
