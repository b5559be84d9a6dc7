"""Running an attempt outside the pool process: in a Python child of its own (``process``)
or as an external program (``executor``).

Neither child is a fork of the pool process, which holds database connections and broker
sockets; each runs in a session of its own, so its process group is the child and
everything it starts. The pool process stays the one that writes state: it reads the
child's reports (``supervise``), forwards progress through the runner's fenced,
throttled ``RunnerContext``, and writes the outcome.

- ``process``: the child is forked from the pool process's template (``template``, its
  pool side ``forkserver``): a process started with each pool process (before it takes
  work) that set Django up and imported the plugins, with no database connection open
  and no thread, so an attempt costs a fork and its own work, not an interpreter start
  and ``django.setup()`` (about half a second of CPU). Each child is forked ahead of its
  attempt and waits for it on its stdin, so an attempt that comes finds it ready. The
  template is replaced after
  ``ISOLATION_TEMPLATE_FORKS`` forks and when it dies (the attempt at hand asks the new
  one); a worker restart (new code or settings) ends it with its pool process. The child
  reads the attempt as one JSON line on stdin (type, encoded parameters, memory limit),
  runs the plugin with the same API (``child``), and answers with JSON lines on a pipe
  of its own (progress, then the result, the error or the cancel). A ``cancel`` line on
  its stdin makes its ``check_cancelled()`` raise; the end of its stdin (the pool process
  died) kills its group. ``memory_limit`` is ``RLIMIT_AS``, soft and hard (the plugin
  cannot lift it), set in the child just before the plugin runs. With
  ``ISOLATION_TEMPLATE_FORKS = 0`` (or if no template can fork) the child is a fresh
  interpreter, ``python -m batchtasks.worker.isolation.child``, and after each run the
  pool process starts a spare one that sets up while the worker waits for its next
  message.
- ``executor``: the program gets the raw parameters (JSON) on stdin, its own temporary
  working directory (removed afterwards) and only the environment it declares; its
  stdout is read line by line (``executor``).

The supervisor stops a child whose task was cancelled, or that stayed silent past the
type's ``inactivity_timeout``: SIGTERM to its group (a ``process`` child first gets
``CANCEL_GRACE`` to honour the cancel), SIGKILL ``KILL_GRACE`` later, and after any
end it SIGKILLs the group, so no grandchild outlives its attempt; descendants that left
the group (``setsid()``) are re-parented to the pool process, a subreaper while the
attempt runs, and killed at its end (``reaper``). Celery's soft time
limit is passed on (SIGUSR1 to a Python child, SIGTERM to a program's group); its hard
limit kills the pool process, whose SIGTERM handler kills the group first
(``stopping.child_group``).
"""
