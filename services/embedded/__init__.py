"""The whole service on one machine (what ``persyn up`` starts): Redis, workers, gateway, demo pool."""
