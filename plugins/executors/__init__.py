"""Executor programs: plain command-line tools that batchtasks workers start as tasks."""
