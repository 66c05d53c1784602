"""Helpers shared by test modules: harnesses, fixtures, constants (not collected as tests)."""
