"""matomete — the back office of フレッツ・まとめて支払い.

The domain is pure Python: it never imports Celery, and takes the time from its caller.
"""

__version__ = "0.1.0"
