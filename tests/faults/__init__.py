"""Fault tests: the Procfile's processes against a real receiver while things break."""
