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
# Production mode: HTTPS only (HSTS, redirect, secure cookies); no start with DEBUG or a weak key.
PRODUCTION = env_bool("HITL_PRODUCTION", False)
ALLOWED_HOSTS = [h for h in env_str("HITL_ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]").split(",") if h]
CSRF_TRUSTED_ORIGINS = [o for o in env_str("HITL_CSRF_TRUSTED_ORIGINS", "").split(",") if o]
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = env_bool("HITL_SECURE_COOKIES", PRODUCTION)
if env_bool("HITL_BEHIND_TLS_PROXY", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = env_bool("HITL_SSL_REDIRECT", PRODUCTION)
SECURE_HSTS_SECONDS = int(env_number("HITL_HSTS_SECONDS", 365 * 24 * 3600 if PRODUCTION else 0))
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("HITL_HSTS_INCLUDE_SUBDOMAINS", True)
# Preloading is a promise to browsers' built-in lists that is slow to take back: only on request.
SECURE_HSTS_PRELOAD = env_bool("HITL_HSTS_PRELOAD", False)
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_HTTPONLY = True
# Scripts only from this origin (Swagger UI's included, served by the split view); styles may be
# inline (the page templates carry a <style> block); nothing may frame hitl.
HITL_CONTENT_SECURITY_POLICY = env_str(
    "HITL_CONTENT_SECURITY_POLICY",
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; font-src 'self' data:; connect-src 'self'; object-src 'none'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
)

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


def _refuse_unsafe_production() -> None:
    """HITL_PRODUCTION=true with DEBUG, or without a strong HITL_SECRET_KEY, does not start."""
    if not PRODUCTION:
        return
    if DEBUG:
        raise ImproperlyConfigured(
            "HITL_PRODUCTION=true with HITL_DEBUG=true: debug pages leak settings; unset HITL_DEBUG"
        )
    key = env_str("HITL_SECRET_KEY", "")
    if len(key) < 50 or len(set(key)) < 5 or key.startswith("django-insecure-"):
        raise ImproperlyConfigured(
            "HITL_PRODUCTION=true needs HITL_SECRET_KEY: at least 50 characters, 5 of them "
            "different, e.g. python -c 'import secrets; print(secrets.token_urlsafe(50))'"
        )


_refuse_unsafe_production()
if PRODUCTION and not SECURE_HSTS_PRELOAD:
    # check --deploy warns when HSTS preloading is off; off is the deliberate default (see above).
    SILENCED_SYSTEM_CHECKS = ["security.W021"]
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
    "hitl.middleware.RequestBodyLimitMiddleware",  # first: a 413 before anything reads the body
    "django.middleware.security.SecurityMiddleware",
    "hitl.middleware.ContentSecurityPolicyMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "hitl.middleware.LoginThrottleMiddleware",
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
# The pages' own scripts, and the chart library from the pinned npm packages (package.json,
# package-lock.json; `make install` runs `npm ci`): served from here, never from a CDN.
NODE_MODULES = BASE_DIR / "node_modules"
STATICFILES_DIRS = [
    BASE_DIR / "static",
    ("vendor/chart.js", NODE_MODULES / "chart.js" / "dist"),
    ("vendor/chartjs-chart-matrix", NODE_MODULES / "chartjs-chart-matrix" / "dist"),
]

# One body limit for every endpoint, multipart included (hitl.middleware).
HITL_MAX_REQUEST_BYTES = int(env_number("HITL_MAX_REQUEST_BYTES", 128 * 1024 * 1024))
HITL_MAX_JSON_DEPTH = int(env_number("HITL_MAX_JSON_DEPTH", 32))
DATA_UPLOAD_MAX_MEMORY_SIZE = HITL_MAX_REQUEST_BYTES
DATA_UPLOAD_MAX_NUMBER_FILES = int(env_number("HITL_MAX_UPLOAD_FILES", 1000))
FILE_UPLOAD_MAX_MEMORY_SIZE = 32 * 1024 * 1024

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "hitl.api.authentication.DeploymentTokenAuthentication",
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "hitl.api.schema.HitlAutoSchema",
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.PageNumberPagination",
    "PAGE_SIZE": 100,
    "EXCEPTION_HANDLER": "hitl.api.errors.exception_handler",
    "DEFAULT_THROTTLE_CLASSES": [
        "hitl.api.throttles.AnonymousThrottle",
        "hitl.api.throttles.UserThrottle",
        "hitl.api.throttles.DeploymentThrottle",
    ],
    "DEFAULT_PARSER_CLASSES": [
        "hitl.api.parsers.StrictJSONParser",
        "rest_framework.parsers.FormParser",
        "rest_framework.parsers.MultiPartParser",
    ],
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
# The OpenAPI schema and Swagger UI need a signed-in user unless this opens them to anyone.
HITL_PUBLIC_API_SCHEMA = env_bool("HITL_PUBLIC_API_SCHEMA", False)

# --- hitl domain limits ---
HITL_MAX_IMAGE_BYTES = int(env_number("HITL_MAX_IMAGE_BYTES", 20 * 1024 * 1024))
HITL_MAX_IMAGE_PIXELS = int(env_number("HITL_MAX_IMAGE_PIXELS", 40_000_000))
# Models see one frame: animated or multi-page images are refused above this many frames.
HITL_MAX_IMAGE_FRAMES = max(1, int(env_number("HITL_MAX_IMAGE_FRAMES", 1)))
HITL_MAX_BULK_PREDICTIONS = int(env_number("HITL_MAX_BULK_PREDICTIONS", 10_000))
HITL_PROBABILITY_TOLERANCE = float(env_number("HITL_PROBABILITY_TOLERANCE", 0.01, float))
HITL_DEVICE = env_str("HITL_DEVICE", "auto")
# Review leases: how long a reviewer holds the open tasks in front of them, and how many.
HITL_REVIEW_LEASE_SECONDS = int(env_number("HITL_REVIEW_LEASE_SECONDS", 180))
HITL_REVIEW_LEASE_ITEMS = int(env_number("HITL_REVIEW_LEASE_ITEMS", 3))
# Processes that decode images while a model trains or scores. 0 decodes in the task's own process:
# Celery's default prefork pool may not start children; raise it with `--pool threads` or `solo`.
HITL_LOADER_WORKERS = max(0, int(env_number("HITL_LOADER_WORKERS", 0)))
HITL_STALLED_AFTER_SECONDS = int(env_number("HITL_STALLED_AFTER_SECONDS", 300))
# A candidate's temperature is fitted on at least this many held-out human labels, else it stays 1.
HITL_MIN_CALIBRATION_LABELS = max(2, int(env_number("HITL_MIN_CALIBRATION_LABELS", 50)))

# --- Monitoring: drift alerts per deployment (hitl.services.monitoring) ---
# How often Celery beat runs the monitor; each run judges every deployment's last complete window.
HITL_MONITOR_INTERVAL_SECONDS = int(env_number("HITL_MONITOR_INTERVAL_SECONDS", 300))
# Windows missed while beat or the workers were down that one monitoring run judges (the newest).
HITL_MONITOR_CATCH_UP_WINDOWS = int(env_number("HITL_MONITOR_CATCH_UP_WINDOWS", 48))
# Beat verifies every project's whole trust chain this often; pages check the events since
# (hitl.services.trust.trust_status).
HITL_TRUST_FULL_CHECK_SECONDS = int(env_number("HITL_TRUST_FULL_CHECK_SECONDS", 3600))
# Alert webhooks: the body is signed with a key per project derived from this (default: SECRET_KEY);
# `manage.py hitl monitor --project P --webhook-key` prints a project's key for its receiver.
HITL_ALERT_WEBHOOK_SECRET = env_str("HITL_ALERT_WEBHOOK_SECRET", "")
HITL_ALERT_WEBHOOK_TIMEOUT = float(env_number("HITL_ALERT_WEBHOOK_TIMEOUT", 5.0, float))
# Off: a project admin cannot point a webhook at loopback, private or link-local addresses (SSRF).
HITL_ALERT_WEBHOOK_ALLOW_PRIVATE = env_bool("HITL_ALERT_WEBHOOK_ALLOW_PRIVATE", False)
EMAIL_BACKEND = env_str("HITL_EMAIL_BACKEND", "django.core.mail.backends.smtp.EmailBackend")
EMAIL_HOST = env_str("HITL_EMAIL_HOST", "localhost")
EMAIL_PORT = int(env_number("HITL_EMAIL_PORT", 25))
EMAIL_HOST_USER = env_str("HITL_EMAIL_USER", "")
EMAIL_HOST_PASSWORD = env_str("HITL_EMAIL_PASSWORD", "")
EMAIL_USE_TLS = env_bool("HITL_EMAIL_USE_TLS", False)
EMAIL_TIMEOUT = int(env_number("HITL_EMAIL_TIMEOUT", 10))
DEFAULT_FROM_EMAIL = env_str("HITL_EMAIL_FROM", "hitl@localhost")

# --- Label Studio (labeling app); empty URL: not connected ---
LABEL_STUDIO_URL = env_str("LABEL_STUDIO_URL", "").rstrip("/")
LABEL_STUDIO_API_KEY = env_str("LABEL_STUDIO_API_KEY", "")
LABEL_STUDIO_TIMEOUT = float(env_number("HITL_LS_TIMEOUT", 10.0, float))
LABEL_STUDIO_RETRIES = int(env_number("HITL_LS_RETRIES", 3))
LABEL_STUDIO_RECONCILE_SECONDS = int(env_number("HITL_LS_RECONCILE_SECONDS", 300))
# Where Label Studio (webhooks) and reviewers' browsers (signed image URLs) reach this service.
HITL_PUBLIC_URL = env_str("HITL_PUBLIC_URL", "http://127.0.0.1:8000").rstrip("/")
# Each project's webhook has its own secret (`manage.py labelstudio connect` / `rotate-secret`);
# after a rotation the previous one is still accepted this long (events already on their way).
HITL_LS_SECRET_GRACE_SECONDS = int(env_number("HITL_LS_SECRET_GRACE_SECONDS", 60))
# The image-URL signing key derives from SECRET_KEY unless set.
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

# --- abuse limits ---
# Throttles (hitl.api.throttles) and the login lockout count in this cache: Redis, shared by every
# web process, when the broker is Redis; else this process's memory.
_BROKER_IS_REDIS = CELERY_BROKER_URL.startswith(("redis://", "rediss://"))
HITL_CACHE_URL = env_str("HITL_CACHE_URL", CELERY_BROKER_URL if _BROKER_IS_REDIS else "locmem://")
# Several hitl installations (and test databases) may share one Redis: keys carry a prefix.
_CACHE_PREFIX = env_str("HITL_CACHE_PREFIX", f"{HITL_QUEUE_PREFIX}:{DATABASES['default']['NAME']}")
CACHES = {
    "default": (
        {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}
        if HITL_CACHE_URL == "locmem://"
        else {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": HITL_CACHE_URL,
              "KEY_PREFIX": _CACHE_PREFIX}
    )
}
# Requests per period for each kind of caller (DRF rate syntax: N/second|minute|hour|day).
HITL_THROTTLE_RATES = {
    "anonymous": env_str("HITL_THROTTLE_ANONYMOUS", "60/minute"),
    "user": env_str("HITL_THROTTLE_USER", "600/minute"),
    "deployment": env_str("HITL_THROTTLE_DEPLOYMENT", "600/minute"),
}
# Failed sign-ins (web and admin) per window: per username and address, and per address.
HITL_LOGIN_FAILURE_LIMITS = (int(env_number("HITL_LOGIN_FAILURES_PER_ACCOUNT", 5)),
                             int(env_number("HITL_LOGIN_FAILURES_PER_ADDRESS", 50)))
HITL_LOGIN_WINDOW_SECONDS = int(env_number("HITL_LOGIN_WINDOW_SECONDS", 900))

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("HITL_LOG_LEVEL", "INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}, "httpx": {"level": "WARNING"}},
}
