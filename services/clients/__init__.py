"""The hardened OpenAI-compatible HTTP client every teacher, student and reward endpoint is reached through."""
