"""The test settings with the task tables in a database of their own (.ci/taskdb).

"default" holds the application's tables (users, sessions), "tasks" batchtasks' tables
alone, routed there by ``batchtasks.db.router.TaskDatabaseRouter``. Both are on the
server of DATABASE_URL unless TASKS_DATABASE_URL says otherwise; as "default", the
"tasks" test database has a name of its own per run (``test_batchtasks_<pid>_tasks``).
"""

import os

os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/batchtasks")
os.environ.setdefault(
    "TASKS_DATABASE_URL", os.environ["DATABASE_URL"].rsplit("/", 1)[0] + "/batchtasks_tasks"
)

from tests.settings import *  # noqa: F403

assert DATABASE_ROUTERS == ["batchtasks.db.router.TaskDatabaseRouter"]  # noqa: F405
assert BATCHTASKS["DATABASE"] == "tasks"  # noqa: F405
