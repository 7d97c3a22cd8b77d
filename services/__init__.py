"""PerSyn core: the method's maths, models, routers and the offline pipeline.

Everything the gateway and the Celery workers do calls into this package.
"""

__version__ = "0.1.0"
