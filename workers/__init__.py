"""Celery entry points: the app, its queues and schedule, and one thin task per inbound message."""
