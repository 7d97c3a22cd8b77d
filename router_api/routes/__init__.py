"""Thin route modules: validate, call into ``services``, shape the answer."""
