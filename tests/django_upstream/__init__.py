"""Django's own tests of ``django.tasks`` (tests/tasks in Django's source), adapted to run
against ``batchtasks.backends.BatchTasksBackend`` with real workers."""
