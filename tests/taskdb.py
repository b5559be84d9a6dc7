"""The alias of the task tables in this run: "tasks" on the task-database leg
(.ci/taskdb), else "default"."""

from django.db import router

from batchtasks.models import BatchTask

TASK_DB = router.db_for_write(BatchTask)
