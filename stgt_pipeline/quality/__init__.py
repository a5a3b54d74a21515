"""Data-quality gates (Great Expectations suites) and data cards."""
