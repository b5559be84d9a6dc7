"""``make run``: migrate, make sure someone can log in, then run the web server and a worker
for every batch queue until Ctrl-C."""

from __future__ import annotations

import os
import secrets
import shlex
import sys

import django


def ensure_admin() -> str:
    """Create a superuser with a random password on first run; say how to log in."""
    from django.conf import settings
    from django.contrib.auth import get_user_model

    users = get_user_model().objects
    password_file = settings.RUN_DIR / "admin-password"
    if not users.filter(is_superuser=True).exists():
        password = secrets.token_urlsafe(12)
        users.create_superuser("admin", "admin@example.com", password)
        settings.RUN_DIR.mkdir(parents=True, exist_ok=True)
        password_file.write_text(password)
        password_file.chmod(0o600)
    if password_file.exists():
        return (
            f"log in as admin / {password_file.read_text().strip()} "
            "(change it with: python manage.py changepassword admin)"
        )
    return "log in with your superuser (python manage.py createsuperuser makes one)"


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
    os.environ.setdefault("DJANGO_DEBUG", "1")  # development: web and worker alike
    django.setup()
    from django.conf import settings
    from django.core.management import call_command
    from honcho.manager import Manager

    from batchtasks.services.definitions import sync_definitions

    call_command("migrate", verbosity=0)
    login = ensure_admin()
    queues = sorted({d.queue for d in sync_definitions()})
    port = os.environ.get("PORT", "8000")
    python = shlex.quote(sys.executable)
    database = settings.DATABASES["default"]["ENGINE"].rsplit(".", 1)[-1]
    broker = settings.CELERY_BROKER_URL.split("://", 1)[0]
    print(
        f"\nbatchtasks (database: {database}, broker: {broker})\n"
        f"  home:    http://127.0.0.1:{port}/  (the running-tasks indicator, an export)\n"
        f"  admin:   http://127.0.0.1:{port}/admin/  {login}\n"
        f"  monitor: http://127.0.0.1:{port}/batchtasks/monitor/\n"
        f"  API:     http://127.0.0.1:{port}/batchtasks/api/tasks/ "
        f"(OpenAPI: /batchtasks/api/schema.json)\n"
        f"  worker:  one worker for {', '.join(queues)}\n"
        '  try:     python manage.py shell -c "from batchtasks import BatchTask; '
        "BatchTask.submit('examples.sleep', {'seconds': 3})\"\n"
        "Ctrl-C stops everything.\n",
        flush=True,
    )
    manager = Manager()
    manager.add_process(
        "web",
        f"{python} manage.py runserver 127.0.0.1:{port}",
    )
    manager.add_process(
        "worker",
        f"{python} -m celery -A project worker -Q {','.join(queues)} -c 2 "
        "--prefetch-multiplier 1 -n batch@%h -l info",
    )
    manager.loop()
    sys.exit(manager.returncode)


if __name__ == "__main__":
    main()
