"""A tiny project app that submits batch tasks, and its tests written as a project that
uses batchtasks would write them: only with the fixtures of the pytest plugin.

``check_orders.py`` is not collected by the suite (its name does not start with
``test_``): ``tests/test_testing_helpers.py`` runs it in a pytest of its own.
"""
