"""Schedule rows: kept in step with ``BATCHTASKS["SCHEDULES"]`` and
``@batchtask(schedule=...)``, checked and re-timed when edited, claimed by the Celery beat
bridge, and listed for the monitor and the CLI.

The settings and the code are the source of the schedules they declare: at each sync (on
migrate and when a worker starts) their rows take the declared values; only ``enabled``
is left as the admin set it, unless the declared ``enabled`` changed since the last
sync. A schedule no longer declared is disabled, its history kept. Schedules created in
the admin are the admin's alone.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.contrib.auth import get_user_model
from django.db import IntegrityError, router, transaction
from django.db.models import F

from ..core.conf import get_settings
from ..core.exceptions import BatchTasksError, InvalidParameters, InvalidTaskOption
from ..core.registry import registry
from ..core.schedules import check_declared, next_tick
from ..db.sql import database_now
from ..models import BatchTask, BatchTaskSchedule, ScheduleSource
from .schedules import Pass, claim, unfinished

logger = logging.getLogger(__name__)

#: The fields a settings declaration sets (``enabled`` apart: see the module text).
DECLARED_FIELDS = (
    "type_name",
    "cron",
    "every",
    "timezone",
    "params",
    "catch_up",
    "catch_up_limit",
    "overlap",
    "owner_id",
    "priority",
    "description",
)
TIMING_FIELDS = ("cron", "every", "timezone")


def _db(using: str | None) -> str:
    return using or router.db_for_write(BatchTaskSchedule)


def check_row(row: BatchTaskSchedule) -> None:
    """``InvalidTaskOption``/``InvalidParameters`` unless the row can tick and submit."""
    row.timing  # noqa: B018  (checks cron, every and timezone)
    check_type(row)


def check_type(row: BatchTaskSchedule) -> None:
    """``UnknownTaskType``/``InvalidParameters`` unless the row's type takes its params."""
    spec = registry.get(row.type_name)
    try:
        spec.plugin.validate_params(row.params if row.params is not None else {})
    except InvalidParameters as exc:
        raise InvalidParameters(
            f"Schedule {row.name!r}: parameters for {row.type_name!r}: {exc}", fields=exc.fields
        ) from None


def retime(row: BatchTaskSchedule, *, using: str | None = None) -> None:
    """Set ``next_run_at`` to the first tick after the database's now (not saved)."""
    if row.source == ScheduleSource.CELERY_BEAT:
        return
    row.next_run_at = next_tick(row.timing, database_now(_db(using))) if row.enabled else None


def _owner_id(name: str, owner: Any) -> int | None:
    if owner is None:
        return None
    users = get_user_model()._default_manager  # routed: may be another database than db
    key = "pk" if isinstance(owner, int) else get_user_model().USERNAME_FIELD
    pk = users.filter(**{key: owner}).values_list("pk", flat=True).first()
    if pk is None:
        raise InvalidTaskOption(
            f"BATCHTASKS['SCHEDULES'][{name!r}]: owner={owner!r} is no user; give an existing "
            "user's id or username, or None."
        )
    return int(pk)


def _declared_values(name: str, options: dict[str, Any], db: str) -> dict[str, Any]:
    values = check_declared(name, options)
    fields = {
        "type_name": values["type"],
        "cron": values["cron"] or "",
        "every": values["every"],
        "timezone": values["timezone"],
        "params": values["params"],
        "catch_up": values["catch_up"],
        "catch_up_limit": values["catch_up_limit"],
        "overlap": values["overlap"],
        "owner_id": _owner_id(name, values["owner"]),
        "priority": values["priority"],
        "description": values["description"],
    }
    check_row(BatchTaskSchedule(name=name, **fields))
    return fields | {"enabled": values["enabled"]}


def sync_schedules(*, using: str | None = None) -> list[BatchTaskSchedule]:
    """Create or update the rows of ``BATCHTASKS["SCHEDULES"]`` and disable those no longer
    declared; a declaration that cannot be used is logged and left out."""
    db = _db(using)
    declared = declared_schedules()
    rows = []
    for name, (source, options) in declared.items():
        try:
            values = _declared_values(name, options, db)
        except BatchTasksError as exc:
            logger.error("batchtasks schedule=%s not synced: %s", name, exc)
            continue
        rows.append(_sync_one(name, source, values, db))
    declaring = (ScheduleSource.SETTINGS, ScheduleSource.CODE)
    gone = BatchTaskSchedule.objects.using(db).filter(source__in=declaring)
    for row in gone.exclude(name__in=list(declared)).filter(enabled=True):
        logger.info("batchtasks schedule=%s no longer in settings: disabled", row.name)
        BatchTaskSchedule.objects.using(db).filter(pk=row.pk).update(
            enabled=False, next_run_at=None, declared_enabled=None
        )
    return rows


def declared_schedules() -> dict[str, tuple[str, dict[str, Any]]]:
    """Schedules declared in code (``@batchtask(schedule=...)``, named after their type)
    and in the settings, which win for a name in both; each with where it is declared."""
    declared: dict[str, tuple[str, dict[str, Any]]] = {
        spec.name: (ScheduleSource.CODE, {"type": spec.name, **spec.schedule})
        for spec in registry
        if spec.schedule is not None
    }
    for name, options in get_settings().SCHEDULES.items():
        declared[name] = (ScheduleSource.SETTINGS, options)
    return declared


def _sync_one(name: str, source: str, values: dict[str, Any], db: str) -> BatchTaskSchedule:
    """Create or update one settings row; workers starting together may race to create
    it: the loser of the unique name updates the winner's row instead."""
    try:
        return _sync_row(name, source, dict(values), db)
    except IntegrityError:
        return _sync_row(name, source, dict(values), db)


def _sync_row(name: str, source: str, values: dict[str, Any], db: str) -> BatchTaskSchedule:
    enabled = values.pop("enabled")
    with transaction.atomic(using=db):
        row = BatchTaskSchedule.objects.using(db).select_for_update().filter(name=name).first()
        if row is None:
            row = BatchTaskSchedule(name=name, source=source, enabled=enabled)
        was = {f: getattr(row, f) for f in (*TIMING_FIELDS, "enabled")} if row.pk else {}
        for key, value in values.items():
            setattr(row, key, value)
        if row.declared_enabled != enabled:  # the settings changed it: they win
            row.enabled = enabled
        row.source, row.declared_enabled = source, enabled
        now = {f: getattr(row, f) for f in (*TIMING_FIELDS, "enabled")}
        if now != was or (row.enabled and row.next_run_at is None):
            retime(row, using=db)
        row.save(using=db)
    return row


# --- the Celery beat bridge ---------------------------------------------------------------
def bridge_claim(
    name: str,
    type_name: str,
    params: Any,
    *,
    tick_seconds: int,
    overlap: bool,
    options: dict[str, Any],
    using: str | None = None,
) -> BatchTask | None:
    """Submit ``type_name`` for the tick of the beat schedule ``name`` that the database's
    now rounds to (nearest multiple of ``tick_seconds``), unless that tick ran already or
    the schedule's row is disabled."""
    registry.get(type_name)  # an unknown type fails the Celery task, visibly
    db = _db(using)
    with transaction.atomic(using=db):
        row, _ = BatchTaskSchedule.objects.using(db).get_or_create(
            name=name,
            defaults={
                "type_name": type_name,
                "every": tick_seconds,
                "source": ScheduleSource.CELERY_BEAT,
                "description": options.get("description", ""),
            },
        )
        if not row.enabled:  # paused in the admin
            return None
        row.type_name, row.params, row.overlap = type_name, params, overlap
        row.priority = options.get("priority")
        row.description = options.get("description", "")
        now = database_now(db)
        tick = _rounded(now, tick_seconds)
        busy = not overlap and unfinished(row.last_task_id, db)
        task = claim(row, tick, now, db, Pass(), busy=busy)
        BatchTaskSchedule.objects.using(db).filter(pk=row.pk).update(
            type_name=type_name,
            params=params,
            last_run_at=row.last_run_at,
            last_task_id=row.last_task_id,
        )
    return task


def _rounded(now: datetime, seconds: int) -> datetime:
    epoch = datetime(1970, 1, 1, tzinfo=now.tzinfo)
    elapsed = (now - epoch).total_seconds()
    return epoch + timedelta(seconds=round(elapsed / seconds) * seconds)


# --- listings -----------------------------------------------------------------------------
@dataclass(frozen=True)
class ScheduleLine:
    """One schedule as the monitor and the CLI show it."""

    name: str
    type_name: str
    timing: str
    enabled: bool
    source: str
    next_run_at: datetime | None
    last_run_at: datetime | None
    last_task_id: int | None
    last_task_state: str | None


def schedule_lines(*, using: str | None = None, limit: int | None = None) -> list[ScheduleLine]:
    """Schedules with their next and last run and the task their last run made (one
    query), enabled ones first by next run; at most ``limit``."""
    db = router.db_for_read(BatchTaskSchedule) if using is None else using
    rows = BatchTaskSchedule.objects.using(db).order_by(
        "-enabled", F("next_run_at").asc(nulls_last=True), "name"
    )
    fields = ("name", "type_name", "cron", "every", "timezone", "enabled", "source")
    values = rows.values(*fields, "next_run_at", "last_run_at", "last_task_id", "last_task__state")
    return [
        ScheduleLine(
            name=v["name"],
            type_name=v["type_name"],
            timing=BatchTaskSchedule(**{f: v[f] for f in fields}).timing_text(),
            enabled=v["enabled"],
            source=v["source"],
            next_run_at=v["next_run_at"],
            last_run_at=v["last_run_at"],
            last_task_id=v["last_task_id"],
            last_task_state=v["last_task__state"],
        )
        for v in (values if limit is None else values[:limit])
    ]
