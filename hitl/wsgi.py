import gc
import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "hitl.settings")
application = get_wsgi_application()


def freeze_startup_objects() -> None:
    """Move everything loaded at start-up (it lives as long as the process) out of the garbage
    collector's view, so a full collection scans only what requests allocate: at about 450,000
    live objects one took 250 ms, in the middle of a request (benchmarks/workbench_speed.py)."""
    gc.collect()
    gc.freeze()


freeze_startup_objects()
