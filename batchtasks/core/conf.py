"""The ``BATCHTASKS`` setting, read lazily into one typed object."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field, fields
from typing import Any

from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver

from .exceptions import ConfigurationError, InvalidTaskOption
from .names import NAME_RULE, is_name
from .schedules import check_declared


@dataclass(frozen=True)
class BatchTasksSettings:
    """Every key of ``settings.BATCHTASKS`` with its default."""

    #: Modules imported at startup so that their ``@batchtask`` classes register.
    PLUGINS: tuple[str, ...] = ()
    #: Per type: values that replace the code's defaults when its definition row is created.
    TYPES: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Per queue: ``{"max_concurrency": n}`` used when the queue row is created.
    QUEUES: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Schedules by name: ``{"type": ..., "cron": ... or "every": seconds, ...}``
    #: (docs/how-to/schedules.md); their rows follow these at each sync.
    SCHEDULES: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Seconds between a worker's passes over the due schedules (it also wakes at the
    #: earliest next tick).
    SCHEDULE_INTERVAL: float = 1.0
    #: Seconds late a tick may be claimed and still count as on time, not missed (a
    #: missed tick follows its schedule's ``catch_up``).
    SCHEDULE_GRACE: float = 10.0
    #: Prefix of a type's default queue: ``batch.<type name>``.
    QUEUE_PREFIX: str = "batch."
    #: Largest encoded parameters accepted by ``submit`` (bytes).
    MAX_PARAMS_BYTES: int = 1024 * 1024
    #: Largest result a plugin may return, as JSON (bytes); a larger one fails the attempt.
    MAX_RESULT_BYTES: int = 1024 * 1024
    #: Most tasks in flight (queued + running) per queue whose types have no limit.
    DISPATCH_WINDOW: int = 500
    #: Seconds between the safety-net dispatch passes a worker runs.
    DISPATCH_INTERVAL: float = 1.0
    #: Least seconds between two refill passes after finishes of unlimited types.
    REFILL_INTERVAL: float = 0.05
    #: Run time a message of several small tasks of one type aims at (seconds): the
    #: dispatcher puts about this many seconds of measured runs in one message; 0 = one
    #: task per message everywhere.
    MESSAGE_BATCH_SECONDS: float = 0.25
    #: Most tasks in one message.
    MESSAGE_BATCH_MAX: int = 50
    #: A message whose tasks' measured run time adds up to at most this (seconds) is
    #: acked when a pool process takes it, so that the worker fetches the next one while
    #: it runs; longer ones are acked after their runs. 0 = every message after its runs.
    EARLY_ACK_SECONDS: float = 0.05
    #: Seconds a pool process may hold successful finishes to write them in one statement
    #: (the tasks of a message, and across messages of one task each while this is less
    #: than HEARTBEAT_SECONDS: worker.completions); 0 = each finish at once.
    COMPLETION_WINDOW: float = 0.01
    #: Finishes held at most before they are written (the window's other bound).
    COMPLETION_BATCH: int = 50
    #: Least seconds between two progress writes of one task (the last is always written).
    PROGRESS_INTERVAL: float = 1.0
    #: Seconds a claimed task's lease lasts; a worker not heard from for as long is offline.
    LEASE_SECONDS: float = 30.0
    #: Seconds between a worker's heartbeats (lease renewals, its BatchWorker row).
    HEARTBEAT_SECONDS: float = 5.0
    #: Seconds between sweeps (one worker at a time sweeps the whole cluster).
    SWEEP_INTERVAL: float = 5.0
    #: Priority aging: seconds a due task waits ``new`` per point its priority is raised
    #: (the sweeper raises it, up to ``Priority.IMMEDIATE``, from the database's clock);
    #: ``None`` or 0 = off: a lower priority waits as long as a higher one has tasks.
    PRIORITY_AGING: float | None = None
    #: Seconds a sweep may spend deleting finished tasks past their retention; what is
    #: left waits for the next sweep (the sweep's refill of freed slots waits as long).
    PURGE_SECONDS: float = 1.0
    #: Seconds a task may stay queued unclaimed before its message is published again
    #: (then after twice as long, and so on: a duplicate message runs nothing).
    REPUBLISH_AFTER: float = 30.0
    #: Seconds a running task has to honour a cancel before its process gets SIGTERM.
    CANCEL_GRACE: float = 10.0
    #: Seconds between that SIGTERM and the SIGKILL of a process that ignores it.
    KILL_GRACE: float = 5.0
    #: Children a pool process's template forks for ``isolation="process"`` attempts before
    #: it is replaced by a fresh one (0: no template, a fresh interpreter per attempt).
    ISOLATION_TEMPLATE_FORKS: int = 1000
    #: The database alias of the task tables, apart from the application's
    #: (docs/how-to/task-database.md); needs ``batchtasks.db.router.TaskDatabaseRouter`` in
    #: ``DATABASE_ROUTERS``. ``None``: wherever the routers send them (usually "default").
    DATABASE: str | None = None
    #: Keep database connections between tasks (Celery's Django fixup closes them).
    KEEP_DB_CONNECTIONS: bool = True
    #: Worker processes notice a PostgreSQL server they can no longer reach within about
    #: a third of ``LEASE_SECONDS`` (TCP keepalives, a TCP user timeout and a connect
    #: timeout derived from it, where the ``OPTIONS`` of a database do not set them);
    #: without, a statement waits on a cut-off server for many minutes.
    WORKER_KEEPALIVES: bool = True
    #: Worker state writes wait for PostgreSQL's WAL flush (see batchtasks.db).
    SYNCHRONOUS_COMMIT: bool = False
    #: Prepared statements: on the worker's state connection and for submit on the caller's
    #: (off behind a PgBouncer in transaction mode).
    PREPARED_STATEMENTS: bool = True
    #: How long the running-tasks indicator keeps showing a finished task (seconds).
    INDICATOR_RECENT_SECONDS: int = 300
    #: Seconds a poll token lasts: a signed, HttpOnly cookie of the indicator's poll that
    #: lets an unchanged answer (a 304) skip the session and user lookups (0: no token).
    INDICATOR_TOKEN_SECONDS: int = 300
    #: Push instead of polling: the indicator opens a server-sent events stream
    #: (api/tasks/active/events/), which needs an ASGI server; off, it polls (sync WSGI).
    INDICATOR_PUSH: bool = False
    #: Seconds between a push stream's checks for a change (one indexed query each).
    INDICATOR_PUSH_INTERVAL: float = 1.0
    #: The ``-A`` argument printed in worker command lines (default: the Celery app's name).
    CELERY_APP: str | None = None
    #: Seconds a process has to run a final task's finalizers before another may run them.
    FINALIZE_LEASE: float = 60.0
    #: Seconds before a failed finalizer run is tried again, doubled each time up to
    #: ``FINALIZE_BACKOFF_MAX``.
    FINALIZE_BACKOFF: float = 5.0
    FINALIZE_BACKOFF_MAX: float = 600.0
    #: Runs of a task's finalizers before they are given up (``failed``).
    FINALIZE_MAX_ATTEMPTS: int = 10
    #: The key of the HMAC-SHA256 signature of webhook requests; needed by types that
    #: declare a ``webhook`` (environment: ``BATCHTASKS_WEBHOOK_SECRET``).
    WEBHOOK_SECRET: str | None = None
    #: Seconds a webhook request may take.
    WEBHOOK_TIMEOUT: float = 10.0
    # --- the Prometheus endpoint (batchtasks.web.metrics) ---
    #: Who may scrape it, any of: "staff" (the session of a staff user with
    #: ``batchtasks.view_batchtask``, as for the monitor page), "token" (header
    #: ``Authorization: Bearer <METRICS_TOKEN>``), "ip" (a client address in METRICS_ALLOW).
    METRICS_AUTH: tuple[str, ...] = ("staff",)
    #: The bearer token for "token" (environment: ``BATCHTASKS_METRICS_TOKEN``).
    METRICS_TOKEN: str | None = None
    #: Networks (CIDR, e.g. "10.0.0.0/8") whose clients may scrape, for "ip"; the
    #: address is the connection's REMOTE_ADDR, never a forwarded header.
    METRICS_ALLOW: tuple[str, ...] = ()

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> BatchTasksSettings:
        """Build from the user's dict, rejecting unknown keys and wrong types."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ConfigurationError(
                f"Unknown BATCHTASKS setting(s) {', '.join(map(repr, unknown))}; "
                f"known settings are {', '.join(sorted(known))}."
            )
        values = dict(raw)
        if "PLUGINS" in values:
            plugins = values["PLUGINS"]
            if isinstance(plugins, str) or not all(isinstance(p, str) for p in plugins):
                raise ConfigurationError(
                    f"BATCHTASKS['PLUGINS'] must be a list of module paths, not {plugins!r}."
                )
            values["PLUGINS"] = tuple(plugins)
        result = cls(**values)
        result._validate()
        return result

    def _validate(self) -> None:
        for name in (
            "MAX_PARAMS_BYTES",
            "MAX_RESULT_BYTES",
            "DISPATCH_WINDOW",
            "MESSAGE_BATCH_MAX",
            "COMPLETION_BATCH",
            "INDICATOR_RECENT_SECONDS",
            "FINALIZE_MAX_ATTEMPTS",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigurationError(
                    f"BATCHTASKS[{name!r}] must be a positive integer, not {value!r}."
                )
        for name in (
            "DISPATCH_INTERVAL",
            "REFILL_INTERVAL",
            "MESSAGE_BATCH_SECONDS",
            "EARLY_ACK_SECONDS",
            "COMPLETION_WINDOW",
            "PROGRESS_INTERVAL",
            "LEASE_SECONDS",
            "HEARTBEAT_SECONDS",
            "SWEEP_INTERVAL",
            "PURGE_SECONDS",
            "REPUBLISH_AFTER",
            "CANCEL_GRACE",
            "KILL_GRACE",
            "FINALIZE_LEASE",
            "FINALIZE_BACKOFF",
            "FINALIZE_BACKOFF_MAX",
            "WEBHOOK_TIMEOUT",
            "SCHEDULE_INTERVAL",
            "SCHEDULE_GRACE",
            "INDICATOR_PUSH_INTERVAL",
        ):
            value = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
                raise ConfigurationError(
                    f"BATCHTASKS[{name!r}] must be a number of seconds >= 0, not {value!r}."
                )
        aging = self.PRIORITY_AGING
        if aging is not None and (
            not isinstance(aging, int | float)
            or isinstance(aging, bool)
            or not 0 <= aging < float("inf")
        ):
            raise ConfigurationError(
                f"BATCHTASKS['PRIORITY_AGING'] must be seconds of waiting per priority point "
                f"(a number > 0), or None or 0 for no aging, not {aging!r}."
            )
        for name in ("ISOLATION_TEMPLATE_FORKS", "INDICATOR_TOKEN_SECONDS"):
            count = getattr(self, name)
            if not isinstance(count, int) or isinstance(count, bool) or count < 0:
                raise ConfigurationError(
                    f"BATCHTASKS[{name!r}] must be an integer >= 0, not {count!r}."
                )
        if self.WEBHOOK_SECRET is not None and (
            not isinstance(self.WEBHOOK_SECRET, str) or not self.WEBHOOK_SECRET
        ):
            raise ConfigurationError(
                "BATCHTASKS['WEBHOOK_SECRET'] must be a non-empty string, or None."
            )
        if self.DATABASE is not None and (not isinstance(self.DATABASE, str) or not self.DATABASE):
            raise ConfigurationError(
                f"BATCHTASKS['DATABASE'] must be a database alias (a key of DATABASES), "
                f"or None, not {self.DATABASE!r}."
            )
        self._validate_metrics()
        for name in ("TYPES", "QUEUES"):
            value = getattr(self, name)
            if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
                raise ConfigurationError(
                    f"BATCHTASKS[{name!r}] must map names to dicts of options, not {value!r}."
                )
        self._validate_queue_names()
        self._validate_schedules()

    def _validate_queue_names(self) -> None:
        """Queue names from the settings follow the rule of the ones in code."""
        prefix = self.QUEUE_PREFIX
        if not isinstance(prefix, str) or not (prefix == "" or is_name(prefix + "x")):
            raise ConfigurationError(
                f"BATCHTASKS['QUEUE_PREFIX']={prefix!r} must make queue names of {NAME_RULE}."
            )
        for queue in self.QUEUES:
            if not is_name(queue):
                raise ConfigurationError(
                    f"BATCHTASKS['QUEUES'] names the queue {queue!r}; a queue name must be "
                    f"{NAME_RULE}."
                )

    def _validate_schedules(self) -> None:
        if not isinstance(self.SCHEDULES, dict):
            raise ConfigurationError(
                f"BATCHTASKS['SCHEDULES'] must map schedule names to dicts, not {self.SCHEDULES!r}."
            )
        for name, options in self.SCHEDULES.items():
            try:
                check_declared(name, options)
            except InvalidTaskOption as exc:
                raise ConfigurationError(str(exc)) from None

    def _validate_metrics(self) -> None:
        methods = self.METRICS_AUTH
        if isinstance(methods, str) or not set(methods) <= {"staff", "token", "ip"}:
            raise ConfigurationError(
                "BATCHTASKS['METRICS_AUTH'] must list some of 'staff', 'token', 'ip', "
                f"not {methods!r}."
            )
        if "token" in methods and not (isinstance(self.METRICS_TOKEN, str) and self.METRICS_TOKEN):
            raise ConfigurationError(
                "BATCHTASKS['METRICS_AUTH'] has 'token' but METRICS_TOKEN is not set; set it "
                "(or BATCHTASKS_METRICS_TOKEN in the environment) to a long random string."
            )
        allow = self.METRICS_ALLOW
        bad = [allow] if isinstance(allow, str) else [n for n in allow if not _is_network(n)]
        if bad:
            raise ConfigurationError(
                "BATCHTASKS['METRICS_ALLOW'] must be a list of networks like '10.0.0.0/8', "
                f"not {bad[0]!r}."
            )


def _is_network(text: object) -> bool:
    try:
        ipaddress.ip_network(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False
    return True


ENV_PREFIX = "BATCHTASKS_"
_cached: BatchTasksSettings | None = None


#: Settings the environment sets as they are: secrets belong there, not in settings files.
ENV_STRINGS = ("WEBHOOK_SECRET", "METRICS_TOKEN")
#: Settings the environment sets as comma-separated lists (a deployment's .env).
ENV_LISTS = ("METRICS_AUTH", "METRICS_ALLOW")


def _from_environment(raw: dict[str, Any]) -> dict[str, Any]:
    """Per-server overrides: ``BATCHTASKS_<KEY>`` for the number and flag settings, the
    secrets, and who may scrape the metrics."""
    values = dict(raw)
    for f in fields(BatchTasksSettings):
        text = os.environ.get(ENV_PREFIX + f.name)
        if text is None:
            continue
        if f.name in ENV_STRINGS:
            values[f.name] = text
        elif f.name in ENV_LISTS:
            values[f.name] = tuple(item.strip() for item in text.split(",") if item.strip())
        elif f.type in ("int", "float", "bool"):
            values[f.name] = _parse(ENV_PREFIX + f.name, text, str(f.type))
        elif f.type == "float | None":  # PRIORITY_AGING: 0 is off, as None is
            values[f.name] = _parse(ENV_PREFIX + f.name, text, "float")
    return values


#: The words a flag in the environment may be (any case).
FLAGS = {"1": True, "true": True, "yes": True, "on": True} | {
    "0": False, "false": False, "no": False, "off": False
}  # fmt: skip


def _parse(name: str, text: str, kind: str) -> int | float | bool:
    try:
        if kind == "bool":
            return FLAGS[text.strip().lower()]
        return int(text) if kind == "int" else float(text)
    except (KeyError, ValueError):
        hint = "1, true, yes, on or 0, false, no, off" if kind == "bool" else f"a {kind}"
        raise ConfigurationError(f"Environment variable {name}={text!r} must be {hint}.") from None


def get_settings() -> BatchTasksSettings:
    """The current settings; read on first use and again after ``setting_changed``.

    Precedence: ``BATCHTASKS_<KEY>`` environment variables, then ``settings.BATCHTASKS``,
    then the defaults above.
    """
    global _cached
    if _cached is None:
        raw = getattr(settings, "BATCHTASKS", {}) or {}
        _cached = BatchTasksSettings.from_dict(_from_environment(raw))
    return _cached


@receiver(setting_changed)
def _reset(*, setting: str, **kwargs: Any) -> None:
    global _cached
    if setting == "BATCHTASKS":
        _cached = None
