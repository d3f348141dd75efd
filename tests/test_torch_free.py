"""The web never loads a model: the WSGI application, the admin, every URL's view, every module
of hitl/ and labeling/, and Celery beat import neither torch nor workers.ml (nor the pipelines
that use them). Each check runs in a fresh interpreter, as a gunicorn worker or beat starts."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from django.conf import settings

MODEL_MODULES = ("torch", "torchvision", "workers.ml", "workers.pipelines")

PROBE = """
import json, os, sys
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "hitl.settings")
{body}
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "torchvision")
                        or m.startswith(("workers.ml", "workers.pipelines")))))
"""


def loaded_model_modules(body: str, tmp_path: Path) -> list[str]:
    """Run ``body`` in a fresh interpreter; returns the torch-side modules it ended up loading."""
    env = {"HITL_DATA_DIR": str(tmp_path), "DATABASE_URL": f"sqlite:///{tmp_path}/probe.sqlite3",
           "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", PROBE.format(body=textwrap.dedent(body))], env=env, check=False,
                            cwd=settings.BASE_DIR, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_the_web_application_admin_and_every_view_load_no_model(tmp_path: Path) -> None:
    loaded = loaded_model_modules("""
        from django.core.wsgi import get_wsgi_application
        application = get_wsgi_application()      # django.setup(): apps, admin autodiscovery
        from django.contrib import admin
        from django.urls import get_resolver
        from django.utils.module_loading import import_string
        for model_admin in admin.site._registry.values():   # every admin page's module
            __import__(type(model_admin).__module__)
        def walk(patterns):                           # every view of the URLconf
            for pattern in patterns:
                if hasattr(pattern, "url_patterns"):
                    walk(pattern.url_patterns)
                else:
                    __import__(pattern.callback.__module__)
        walk(get_resolver().url_patterns)
        from django.test import Client
        Client().get("/api/v1/schema/")              # a request through the whole stack
    """, tmp_path)
    assert loaded == []


def test_every_module_of_hitl_and_labeling_loads_no_model(tmp_path: Path) -> None:
    loaded = loaded_model_modules("""
        import django, importlib, pkgutil
        django.setup()
        import hitl, labeling
        for package in (hitl, labeling):
            for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
                importlib.import_module(info.name)
    """, tmp_path)
    assert loaded == []


def test_celery_beat_loads_no_model(tmp_path: Path) -> None:
    loaded = loaded_model_modules("""
        import django
        django.setup()
        from workers.celery import app
        assert app.conf.beat_schedule
        app.loader.init_worker()   # what `celery beat` does at start: imports every task module
        import workers.tasks, labeling.tasks
        assert "workers.tasks.retrain" in app.tasks
    """, tmp_path)
    assert loaded == []


@pytest.mark.parametrize("module", ["workers.pipelines.cycles", "hitl.services.cycles"])
def test_the_probe_sees_what_a_module_loads(tmp_path: Path, module: str) -> None:
    """The checks above can fail: a pipeline does load torch, and the probe reports it."""
    loaded = loaded_model_modules(f"import django; django.setup(); import {module}", tmp_path)
    assert ("torch" in loaded) == module.startswith("workers.")
