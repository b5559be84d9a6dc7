"""Settings of the reference project.

With no environment set it runs embedded: SQLite and kombu's filesystem broker
under ``.run/``, no server needed. ``DATABASE_URL`` switches the database (for
example ``postgres://postgres@127.0.0.1:5432/batchtasks``) and ``REDIS_URL`` (or
``BROKER_URL``, e.g. RabbitMQ's ``amqp://``, or ``CELERY_BROKER_URL``) the broker.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import dj_database_url
import django
from django.core.exceptions import ImproperlyConfigured

from .env import env_flag, env_list, env_origins, env_proxy_header, env_seconds

BASE_DIR = Path(__file__).resolve().parent.parent
RUN_DIR = Path(os.environ.get("BATCHTASKS_RUN_DIR", BASE_DIR / ".run"))

DEBUG = env_flag("DJANGO_DEBUG")
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured(
            "DJANGO_SECRET_KEY is not set. Set it to a long random value in production "
            "(python -c 'import secrets; print(secrets.token_urlsafe(50))'), or set "
            "DJANGO_DEBUG=1 for development (make run does)."
        )
    SECRET_KEY = "insecure-development-key-only-used-with-DJANGO_DEBUG"
ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]")

# --- HTTPS behind a TLS-terminating proxy --------------------------------------
# Off unless set: development and the tests speak plain HTTP. The Docker image turns
# them on (docker/Dockerfile), so `manage.py check --deploy` passes there with no warning.
# The header the proxy sets (and overwrites when a client sends it), e.g.
# "X-Forwarded-Proto: https": with it, request.is_secure() believes the proxy.
SECURE_PROXY_SSL_HEADER = env_proxy_header("DJANGO_SECURE_PROXY_SSL_HEADER")
SECURE_SSL_REDIRECT = env_flag("DJANGO_SECURE_SSL_REDIRECT")
SESSION_COOKIE_SECURE = env_flag("DJANGO_SESSION_COOKIE_SECURE")
CSRF_COOKIE_SECURE = env_flag("DJANGO_CSRF_COOKIE_SECURE")
SECURE_HSTS_SECONDS = env_seconds("DJANGO_SECURE_HSTS_SECONDS")
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_flag("DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS")
SECURE_HSTS_PRELOAD = env_flag("DJANGO_SECURE_HSTS_PRELOAD")
# Origins whose unsafe requests (POST...) CSRF accepts when they differ from the Host the
# web sees, e.g. "https://batch.example.com" when the proxy rewrites Host.
CSRF_TRUSTED_ORIGINS = env_origins("DJANGO_CSRF_TRUSTED_ORIGINS")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_celery_results",
    "batchtasks",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Static files from STATIC_ROOT, by the web process itself (docker/: no other server).
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    # The language of each answer: the browser's Accept-Language among LANGUAGES (after
    # sessions, before CommonMiddleware, as Django asks).
    "django.middleware.locale.LocaleMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "project.urls"
# Django's own sign-in pages (django.contrib.auth.urls) with the project's template:
# any active user may sign in, not only staff as at the admin's login.
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"
WSGI_APPLICATION = "project.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "project" / "templates"],
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

# --- Database -----------------------------------------------------------------
# Connections are kept between requests and between tasks (batchtasks keeps
# Celery's Django fixup from closing them around every task), and checked before a
# request reuses one: a connection the server dropped meanwhile (a restart, a failover,
# pg_terminate_backend) is replaced instead of failing the request's first query.
if os.environ.get("DATABASE_URL"):
    DATABASES = {
        "default": dj_database_url.parse(
            os.environ["DATABASE_URL"],
            conn_max_age=int(os.environ.get("DB_CONN_MAX_AGE", "600")),
            conn_health_checks=True,
        )
    }
else:
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": str(RUN_DIR / "db.sqlite3"),
            "OPTIONS": {
                # One writer at a time, taken at BEGIN: the dispatcher's lock on SQLite.
                "transaction_mode": "IMMEDIATE",
                "timeout": 30,
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            },
        }
    }
# TASKS_DATABASE_URL: the task tables in a database of their own
# (docs/how-to/task-database.md); its alias "tasks" is set as BATCHTASKS["DATABASE"] below.
if os.environ.get("TASKS_DATABASE_URL"):
    DATABASES["tasks"] = dj_database_url.parse(
        os.environ["TASKS_DATABASE_URL"],
        conn_max_age=int(os.environ.get("DB_CONN_MAX_AGE", "600")),
        conn_health_checks=True,
    )
    DATABASE_ROUTERS = ["batchtasks.db.router.TaskDatabaseRouter"]
if os.environ.get("BATCHTASKS_TEST_DB_NAME"):
    DATABASES["default"].setdefault("TEST", {})["NAME"] = os.environ["BATCHTASKS_TEST_DB_NAME"]
    if "tasks" in DATABASES:
        DATABASES["tasks"].setdefault("TEST", {})["NAME"] = (
            os.environ["BATCHTASKS_TEST_DB_NAME"] + "_tasks"
        )

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
# The languages batchtasks speaks (batchtasks/locale; README "Languages").
LANGUAGES = [
    ("en", "English"),
    ("nb", "Norsk bokmål"),
    ("nl", "Nederlands"),
    ("de", "Deutsch"),
]
# The reference project's own pages (home, sign-in): project/locale, next to the app's.
LOCALE_PATHS = [BASE_DIR / "project" / "locale"]
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
# The reference project's own files (its favicon); the app's come from batchtasks/static.
STATICFILES_DIRS = [BASE_DIR / "project" / "static"]
# collectstatic's output, which WhiteNoise serves (the Docker image collects at build time);
# made here when missing, so that WhiteNoise has no missing directory to warn about.
STATIC_ROOT = Path(os.environ.get("DJANGO_STATIC_ROOT", BASE_DIR / ".run" / "static"))
STATIC_ROOT.mkdir(parents=True, exist_ok=True)
MEDIA_URL = "media/"
MEDIA_ROOT = Path(os.environ.get("DJANGO_MEDIA_ROOT", BASE_DIR / "media"))

# --- Mail (mail.merge) --------------------------------------------------------
# Development prints mail on the console; production sends by SMTP to localhost:25.
# DJANGO_EMAIL_BACKEND overrides both: the tests point workers at the filebased backend and
# DJANGO_EMAIL_FILE_PATH to read their mail. Django 6.1 configures mail as MAILERS (its
# EMAIL_* settings are deprecated there, and refused beside MAILERS); older Djangos as
# EMAIL_BACKEND and friends.
_mail_backend = os.environ.get("DJANGO_EMAIL_BACKEND") or (
    "django.core.mail.backends.console.EmailBackend"
    if DEBUG
    else "django.core.mail.backends.smtp.EmailBackend"
)
_mail_file_path = os.environ.get("DJANGO_EMAIL_FILE_PATH")
if django.VERSION >= (6, 1):
    _mail_options: dict[str, Any] = {"file_path": _mail_file_path} if _mail_file_path else {}
    if _mail_backend == "django.core.mail.backends.smtp.EmailBackend":
        _mail_options["host"] = "localhost"  # EMAIL_HOST's default; MAILERS has none
    MAILERS = {"default": {"BACKEND": _mail_backend, "OPTIONS": _mail_options}}
else:
    EMAIL_BACKEND = _mail_backend
    if _mail_file_path:
        EMAIL_FILE_PATH = _mail_file_path
DEFAULT_FROM_EMAIL = os.environ.get("DJANGO_DEFAULT_FROM_EMAIL", "webmaster@localhost")

# --- Celery -------------------------------------------------------------------
REDIS_URL = os.environ.get("REDIS_URL", "")
# BROKER_URL names any other broker, e.g. RabbitMQ: amqp://user:password@host:5672/vhost.
CELERY_BROKER_URL = (
    os.environ.get("CELERY_BROKER_URL")
    or os.environ.get("BROKER_URL")
    or REDIS_URL
    or "filesystem://"
)
if CELERY_BROKER_URL.startswith("filesystem://"):
    _broker_dir = RUN_DIR / "broker"
    for _sub in ("queue", "control"):
        (_broker_dir / _sub).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_broker_dir / "queue"),
        "data_folder_out": str(_broker_dir / "queue"),
        "control_folder": str(_broker_dir / "control"),
        "polling_interval": 0.1,
    }
else:
    if CELERY_BROKER_URL.startswith(("redis://", "rediss://")) and not env_flag(
        "CELERY_STOCK_REDIS_TRANSPORT"
    ):
        # kombu's Redis transport without a new client object per command.
        CELERY_BROKER_TRANSPORT = "batchtasks.transport.redis:Transport"
    if os.environ.get("BATCHTASKS_REDIS_PREFIX") and CELERY_BROKER_URL.startswith(
        ("redis://", "rediss://")
    ):
        # Lets several test runs share one Redis server without seeing each other.
        CELERY_BROKER_TRANSPORT_OPTIONS = {
            "global_keyprefix": os.environ["BATCHTASKS_REDIS_PREFIX"]
        }
    if CELERY_BROKER_URL.startswith(("amqp://", "amqps://", "pyamqp://")):
        # Publisher confirms: a publish returns once RabbitMQ holds the message, and one
        # it refused fails, so its tasks go back to `new` instead of waiting for a sweep.
        CELERY_BROKER_TRANSPORT_OPTIONS = {"confirm_publish": True}

CELERY_RESULT_BACKEND = "django-db"
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TIMEZONE = TIME_ZONE
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Batch tasks are guarded by their row, so a redelivered message never runs twice:
# there is no reason to cancel running work when the broker connection drops.
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = False
CELERY_WORKER_HIJACK_ROOT_LOGGER = False

# --- batchtasks ---------------------------------------------------------------
BATCHTASKS: dict[str, Any] = {
    "PLUGINS": [
        "plugins.examples",
        "plugins.reports",
        "plugins.mail",
        "plugins.imaging",
        "plugins.finalizers",
    ],
}
# The chaos test's task type (docker/compose.chaos.yaml) exists only where its ledger does.
if os.environ.get("CHAOS_LEDGER_URL"):
    BATCHTASKS["PLUGINS"].append("plugins.chaos")
# The soak's task types (docker/compose.soak.yaml, plugins/soak.py) write that ledger too,
# post their outcomes to the soak's receiver, and one of them is on a schedule.
if os.environ.get("CHAOS_LEDGER_URL") and os.environ.get("SOAK_WEBHOOK_URL"):
    BATCHTASKS["PLUGINS"].append("plugins.soak")
    BATCHTASKS["SCHEDULES"] = {"soak-tick": {"type": "soak.scheduled", "every": 5}}
    # What the executor program soak.exec gets as $SOAK_LEDGER_URL.
    SOAK_LEDGER_URL = os.environ["CHAOS_LEDGER_URL"]
if "tasks" in DATABASES:
    BATCHTASKS["DATABASE"] = "tasks"

# LOG_FORMAT=json: one JSON object a line (python-json-logger); otherwise readable text.
# Either way a record written while a task runs carries its task_id, task_type, attempt.
LOG_FORMAT = os.environ.get("LOG_FORMAT", "text").strip().lower()
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"task": {"()": "batchtasks.core.logcontext.TaskLogFilter"}},
    "formatters": {
        "plain": {
            "()": "batchtasks.core.logcontext.TaskTextFormatter",
            "format": "%(asctime)s %(levelname)s %(processName)s %(name)s %(message)s",
        },
        "json": {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "format": "%(levelname)s %(processName)s %(name)s %(message)s",
            "rename_fields": {"levelname": "level", "name": "logger"},
            "timestamp": "time",  # ISO 8601 in UTC
        },
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "json" if LOG_FORMAT == "json" else "plain",
            "filters": ["task"],
        }
    },
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
    "loggers": {
        "django.db.backends": {"level": "INFO"},
    },
}
