"""Django settings for hitl: every value comes from the environment, with safe defaults.

The defaults run everything embedded (SQLite under ./var, media under ./var/media) so that a
fresh clone works; production sets DATABASE_URL, CELERY_BROKER_URL and HITL_SECRET_KEY.
"""

from __future__ import annotations

import os
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def env_str(name: str, default: str) -> str:
    return os.environ.get(name, default)


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    if value.lower() in {"1", "true", "yes", "on"}:
        return True
    if value.lower() in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name} must be true or false, got {value!r}")


def env_number(name: str, default: float, cast: type = int) -> float:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return cast(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a {cast.__name__}, got {value!r}") from None


DEBUG = env_bool("HITL_DEBUG", False)
ALLOWED_HOSTS = [h for h in env_str("HITL_ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]").split(",") if h]
CSRF_TRUSTED_ORIGINS = [o for o in env_str("HITL_CSRF_TRUSTED_ORIGINS", "").split(",") if o]
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = env_bool("HITL_SECURE_COOKIES", False)
if env_bool("HITL_BEHIND_TLS_PROXY", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

DATA_DIR = Path(env_str("HITL_DATA_DIR", str(BASE_DIR / "var"))).resolve()
MEDIA_ROOT = Path(env_str("HITL_MEDIA_ROOT", str(DATA_DIR / "media"))).resolve()
MEDIA_URL = "/media/"
# Deployments may reference images by path under this root (a shared volume or object-store
# mount). It lives inside MEDIA_ROOT so that every item's image is a file under MEDIA_ROOT.
STORAGE_ROOT = Path(env_str("HITL_STORAGE_ROOT", str(MEDIA_ROOT / "storage"))).resolve()
# Weights files a project may start its first model from (initial_weights) must lie in here.
MODELS_ROOT = Path(env_str("HITL_MODELS_ROOT", str(DATA_DIR / "models"))).resolve()


def _secret_key() -> str:
    """HITL_SECRET_KEY, or a random key kept in the data dir (made once, readable by its owner
    only). Several hosts must share one: set HITL_SECRET_KEY on each. Sessions, the Label Studio
    webhook secret and the image-URL signatures all derive from it."""
    if env_str("HITL_SECRET_KEY", ""):
        return env_str("HITL_SECRET_KEY", "")
    path = DATA_DIR / "secret_key"
    if not path.exists():  # first start: write a key whole, then link it into place (first one wins)
        import secrets
        import tempfile

        DATA_DIR.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=DATA_DIR, prefix=".secret_key.")
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(50))
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)
    return path.read_text().strip()


SECRET_KEY = _secret_key()
if not STORAGE_ROOT.is_relative_to(MEDIA_ROOT):
    raise ImproperlyConfigured(
        f"HITL_STORAGE_ROOT ({STORAGE_ROOT}) must be inside HITL_MEDIA_ROOT ({MEDIA_ROOT})"
    )
# Deployments write under the storage root: it must not be, or lie in, hitl's own folders.
if STORAGE_ROOT == MEDIA_ROOT or any(
    STORAGE_ROOT.is_relative_to(MEDIA_ROOT / folder) for folder in ("items", "models")
):
    raise ImproperlyConfigured(
        f"HITL_STORAGE_ROOT ({STORAGE_ROOT}) must be a folder of its own inside HITL_MEDIA_ROOT, "
        "not the media root itself nor inside its items/ or models/"
    )

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "hitl",
    "labeling",
    "workers",  # its management commands (the demo); the web never imports its tasks or pipelines
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "hitl.urls"
WSGI_APPLICATION = "hitl.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {
    "default": dj_database_url.parse(
        env_str("DATABASE_URL", f"sqlite:///{DATA_DIR / 'hitl.sqlite3'}"),
        conn_max_age=int(env_number("HITL_DB_CONN_MAX_AGE", 60)),
        conn_health_checks=True,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # The embedded default: the web process, the demo and a Celery worker share one file.
    Path(DATABASES["default"]["NAME"]).parent.mkdir(parents=True, exist_ok=True)
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 30,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "web:projects"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = DATA_DIR / "static"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
WHITENOISE_USE_FINDERS = True

DATA_UPLOAD_MAX_MEMORY_SIZE = int(env_number("HITL_MAX_REQUEST_BYTES", 128 * 1024 * 1024))
DATA_UPLOAD_MAX_NUMBER_FILES = int(env_number("HITL_MAX_UPLOAD_FILES", 1000))
FILE_UPLOAD_MAX_MEMORY_SIZE = 32 * 1024 * 1024

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "hitl.api.authentication.DeploymentTokenAuthentication",
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.PageNumberPagination",
    "PAGE_SIZE": 100,
    "EXCEPTION_HANDLER": "hitl.api.errors.exception_handler",
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "UNAUTHENTICATED_USER": None,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "hitl API",
    "DESCRIPTION": "Human-in-the-loop active learning for vision models.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

# --- hitl domain limits ---
HITL_MAX_IMAGE_BYTES = int(env_number("HITL_MAX_IMAGE_BYTES", 20 * 1024 * 1024))
HITL_MAX_IMAGE_PIXELS = int(env_number("HITL_MAX_IMAGE_PIXELS", 40_000_000))
# Models see one frame: animated or multi-page images are refused above this many frames.
HITL_MAX_IMAGE_FRAMES = max(1, int(env_number("HITL_MAX_IMAGE_FRAMES", 1)))
HITL_MAX_BULK_PREDICTIONS = int(env_number("HITL_MAX_BULK_PREDICTIONS", 10_000))
HITL_PROBABILITY_TOLERANCE = float(env_number("HITL_PROBABILITY_TOLERANCE", 0.01, float))
HITL_DEVICE = env_str("HITL_DEVICE", "auto")
# Processes that decode images while a model trains or scores. 0 decodes in the task's own process:
# Celery's default prefork pool may not start children; raise it with `--pool threads` or `solo`.
HITL_LOADER_WORKERS = max(0, int(env_number("HITL_LOADER_WORKERS", 0)))
HITL_STALLED_AFTER_SECONDS = int(env_number("HITL_STALLED_AFTER_SECONDS", 300))

# --- Label Studio (labeling app); empty URL: not connected ---
LABEL_STUDIO_URL = env_str("LABEL_STUDIO_URL", "").rstrip("/")
LABEL_STUDIO_API_KEY = env_str("LABEL_STUDIO_API_KEY", "")
LABEL_STUDIO_TIMEOUT = float(env_number("HITL_LS_TIMEOUT", 10.0, float))
LABEL_STUDIO_RETRIES = int(env_number("HITL_LS_RETRIES", 3))
LABEL_STUDIO_RECONCILE_SECONDS = int(env_number("HITL_LS_RECONCILE_SECONDS", 300))
# Where Label Studio (webhooks) and reviewers' browsers (signed image URLs) reach this service.
HITL_PUBLIC_URL = env_str("HITL_PUBLIC_URL", "http://127.0.0.1:8000").rstrip("/")
# Secrets derive from SECRET_KEY unless set: the webhook header and the image-URL signatures.
HITL_LS_WEBHOOK_SECRET = env_str("HITL_LS_WEBHOOK_SECRET", "")
HITL_IMAGE_URL_SECRET = env_str("HITL_IMAGE_URL_SECRET", "")
HITL_IMAGE_URL_MAX_AGE = int(env_number("HITL_IMAGE_URL_MAX_AGE", 7 * 24 * 3600))  # seconds
# Origins (scheme://host[:port]) whose scripts may read image responses; none by default.
HITL_IMAGE_CORS_ORIGINS = [o for o in env_str("HITL_IMAGE_CORS_ORIGINS", "").split(",") if o]

# --- The trust history's signing key, public keyring and head file: outside the database ---
HITL_TRUST_KEY_FILE = Path(env_str("HITL_TRUST_KEY_FILE", str(DATA_DIR / "trust" / "signing_key.pem")))
HITL_TRUST_PUBLIC_KEYS = Path(env_str("HITL_TRUST_PUBLIC_KEYS", str(DATA_DIR / "trust" / "public_keys.pem")))
HITL_TRUST_HEAD_FILE = Path(env_str("HITL_TRUST_HEAD_FILE", str(DATA_DIR / "trust" / "heads.jsonl")))

# --- Celery (read by workers.celery with namespace CELERY) ---
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0")
HITL_QUEUE_PREFIX = env_str("HITL_QUEUE_PREFIX", "hitl")
CELERY_TASK_IGNORE_RESULT = True  # state lives in database rows, not in a result backend
CELERY_TASK_ALWAYS_EAGER = False
CELERY_WORKER_PREFETCH_MULTIPLIER = 1  # long tasks: do not hoard messages a dead worker loses
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BROKER_TRANSPORT_OPTIONS = {
    # A message of a worker that died is redelivered after this; it must outlast the longest task.
    "visibility_timeout": int(env_number("HITL_VISIBILITY_TIMEOUT", 4 * 3600)),
}
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_BEAT_SCHEDULE_FILENAME = str(DATA_DIR / "celerybeat-schedule")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("HITL_LOG_LEVEL", "INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}, "httpx": {"level": "WARNING"}},
}
