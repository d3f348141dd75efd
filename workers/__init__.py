"""The worker side: the Celery app (``celery``), thin tasks (``tasks``), ``pipelines`` (database
plus models: what the tasks call) and ``ml`` (torch and numpy only, no Django).

hitl imports none of this but ``workers.celery`` (to send tasks by name), so the web never loads
torch; it is a Django app only for its management commands (``manage.py demo``).
"""
