"""Settings for the test suite: the reference project on the real PostgreSQL and Redis.

Each run gets its own database name and Redis key prefix, so runs on one machine
never see each other's data.
"""

import os

os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/batchtasks")
os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/0")
os.environ.setdefault("BATCHTASKS_REDIS_PREFIX", f"batchtasks-test-{os.getpid()}:")
os.environ.setdefault("BATCHTASKS_TEST_DB_NAME", f"test_batchtasks_{os.getpid()}")

from project.settings import *  # noqa: F403
