"""The paper's method as plain functions: rewards, pairs, Bradley-Terry, Hit@k, strategies, data formats.

Imports nothing else of ``services``: the CLI, the workers and the benchmarks share these definitions.
"""
