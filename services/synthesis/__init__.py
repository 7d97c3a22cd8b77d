"""Asking teachers for answers (math rejection sampling included) and the offline Route-then-Generate pipeline."""
