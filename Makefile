# The commands of this project. `make test` is what CI runs (.ci/run).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat requirements/base.txt requirements/dev.txt requirements/docs.txt pyproject.toml | sha1sum | cut -c1-12)

# Tests and benchmarks use the real PostgreSQL and Redis of this machine.
TEST_ENV := DATABASE_URL=$${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/batchtasks} \
            REDIS_URL=$${REDIS_URL:-redis://127.0.0.1:6379/0} \
            DJANGO_SETTINGS_MODULE=tests.settings
# Processes make test's first leg and the Django 6 leg run side by side (pytest-xdist;
# a test file stays in one; each has its own test database and Redis key prefix): most
# tests wait on worker processes, not on the CPU. 0: in pytest's own process.
TEST_PROCESSES ?= 2

# The languages of batchtasks/locale (and of the reference project's pages, project/locale)
# next to English; their compiled catalogs (.mo) are built from the .po files, never committed.
LANGUAGES := nb nl de
MO := $(foreach lang,$(LANGUAGES),$(foreach domain,django djangojs,\
        batchtasks/locale/$(lang)/LC_MESSAGES/$(domain).mo) project/locale/$(lang)/LC_MESSAGES/django.mo)

.PHONY: all run test messages compilemessages docs docs-serve test-django6 test-rabbitmq test-pgbouncer test-taskdb lint format typecheck bench bench-scale bench-scaleout profile services browser requirements clean docker-smoke chaos soak

all: test

# The project itself is installed too (editable), so that its entry points (the pytest
# plugin) are live; built with the pinned setuptools of dev.txt: nothing more is fetched.
$(STAMP): requirements/base.txt requirements/dev.txt requirements/docs.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements/base.txt -r requirements/dev.txt \
	    -r requirements/docs.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	rm -f $(VENV)/.installed-* && touch $@

venv: $(STAMP) $(MO)

## messages: update the catalogs (batchtasks/locale/*/LC_MESSAGES/*.po) from the code
##           and templates (-d django) and the static scripts (-d djangojs), and the
##           reference project's (project/locale, -d django).
messages: $(STAMP)
	mkdir -p project/locale
	cd project && ../$(BIN)/python ../manage.py makemessages --no-obsolete --no-location \
	    $(addprefix -l ,$(LANGUAGES)) -d django
	mkdir -p batchtasks/locale
	cd batchtasks && ../$(BIN)/python ../manage.py makemessages --no-obsolete --no-location \
	    $(addprefix -l ,$(LANGUAGES)) -d django
	cd batchtasks && ../$(BIN)/python ../manage.py makemessages --no-obsolete --no-location \
	    $(addprefix -l ,$(LANGUAGES)) -d djangojs --ignore 'static/admin/*'

## compilemessages: the .mo files Django reads, from the .po files (GNU gettext's msgfmt,
##                  installed by .ci/gettext if missing, else Babel); make venv, run and test
##                  do it too.
compilemessages: $(MO)

# Where GNU gettext cannot be installed (no apt, no root), Babel (in the virtualenv with
# the docs' requirements) compiles them instead, without msgfmt's format checks: make run
# still starts on such a machine; make test's checks of the catalogs stay in test_i18n.
%.mo: %.po | $(STAMP)
	@if command -v msgfmt >/dev/null || .ci/gettext; then \
	    msgfmt --check-format -o $@ $<; \
	else \
	    echo "Compiling $< with Babel instead of msgfmt"; \
	    $(BIN)/pybabel -q compile -i $< -o $@; \
	fi

## run: the web server and one worker for every batch queue (SQLite + filesystem broker
##      unless DATABASE_URL / REDIS_URL are set); Ctrl-C stops both.
run: $(STAMP) $(MO)
	$(BIN)/python -m project.dev

## test: checks, lint (with the layers contract), types, the docs (strict) and the whole test suite on
##       PostgreSQL and Redis; then side by side the suite on the newest Django (without
##       the worker-process tests) and the broker tests on RabbitMQ (.ci/second-legs);
##       then side by side (.ci/third-legs) the worker, sweeper and chaos tests through
##       PgBouncer (.ci/pgbouncer) and with the task tables in a database of their own
##       (.ci/taskdb), and the container tests: the Docker smoke test, the quick chaos
##       test (.ci/docker-chaos --quick) and a 3-minute soak (.ci/docker-soak).
test: $(STAMP) $(MO) services browser
	$(TEST_ENV) $(BIN)/python manage.py check --fail-level WARNING
	$(TEST_ENV) $(BIN)/python manage.py makemigrations --check --dry-run
	$(MAKE) --no-print-directory lint
	$(BIN)/mypy
	$(MAKE) --no-print-directory docs
	$(TEST_ENV) $(BIN)/python -m pytest -n $(TEST_PROCESSES) --dist loadfile --durations=25
	$(TEST_ENV) TEST_PROCESSES=$(TEST_PROCESSES) .ci/second-legs
	$(TEST_ENV) .ci/third-legs

## test-rabbitmq: the broker-specific tests on RabbitMQ (skipped without it; see .ci/rabbitmq).
test-rabbitmq: $(STAMP) services
	$(TEST_ENV) .ci/rabbitmq

## test-pgbouncer: the worker, sweeper and chaos tests through a PgBouncer in transaction
##                 pooling mode (installed and started if missing; see .ci/pgbouncer).
test-pgbouncer: $(STAMP) services
	$(TEST_ENV) .ci/pgbouncer

## test-taskdb: the task database leg alone: the task tables in a database of their own
##              (tests/settings_taskdb.py; see .ci/taskdb).
test-taskdb: $(STAMP) services
	$(TEST_ENV) .ci/taskdb

## test-django6: the suite on the newest Django only (skipped without Python >= 3.12).
test-django6: services
	$(TEST_ENV) .ci/django6

## docs: the documentation site (docs/, mkdocs.yml) into site/, in strict mode: a broken
##       link, reference or docstring warning fails it. `make docs-serve` serves it live.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

docs-serve: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve

## lint: ruff, ruff format, and import-linter: imports point down the layers, no circles.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-cache

format: $(STAMP)
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

typecheck: $(STAMP)
	$(BIN)/mypy

## bench: throughput and latency against plain Celery, on PostgreSQL and Redis.
bench: $(STAMP) services
	$(TEST_ENV) $(BIN)/python -m bench.run

## profile: py-spy flame graphs (SVG, .run/profile/) of a bench worker's main and pool
##          processes while it runs 10,000 no-op batch tasks; prints the top functions.
profile: $(STAMP) services
	$(TEST_ENV) $(BIN)/python -m bench.profile

## bench-scale: how dispatch, submit, throughput, purge and worker memory grow with the
##              rows in the table (up to 1,000,000; SCALE_SIZES=1000,100000 for a quick run).
bench-scale: $(STAMP) services
	$(TEST_ENV) $(BIN)/python -m bench.scale

## bench-scaleout: throughput and the CPU per task of the worker containers, PostgreSQL and
##                 Redis, and the connections, with 1, 2 and 3 worker containers, for each
##                 task shape (a container stack of its own; see .ci/docker-scaleout).
bench-scaleout: $(STAMP)
	.ci/docker-scaleout

## docker-smoke: build docker/'s image, bring its compose file up, run a task through the
##               web on a worker container, take it all down (skipped without an engine).
docker-smoke: $(STAMP)
	.ci/docker-smoke

## chaos: faults under a steady load on a container stack of three workers (crash, PostgreSQL
##        restart, Redis restarted empty or frozen, a worker frozen past its lease, every
##        backend terminated, a worker cut off PostgreSQL or Redis, a read-only failover,
##        the connections taken, repeated kills, the sweeper killed, a long transaction or
##        read, a pool process OOM-killed, PostgreSQL's disk full, faults inside
##        finalizers); a row per scenario from a ledger outside the task table; fails if a task
##        is lost, completed twice, ran beside itself or broke its limit, or a worker the
##        fault hindered never worked again.
##        SCENARIOS=crash_recovery,broker_pause runs those only (see .ci/docker-chaos).
chaos: $(STAMP)
	.ci/docker-chaos $(if $(SCENARIOS),--scenarios $(SCENARIOS))

## soak: random faults, all features at once: for SOAK_MINUTES (30) a submitter and an API
##       user keep a mixed load going on three worker containers and the web service while
##       the chaos scenarios fire at random, one at a time; judged from the ledgers (lost,
##       completed twice, overlaps, limits, finalizers and webhooks once per outcome, no
##       cancelled or superseded task started, no 5xx outside faults); the report (counts,
##       fault timeline, throughput PNG) in .run/soak/<timestamp>/; fails if one broke.
##       SOAK_SEED=N repeats the random choices; SCENARIOS=a,b fires those only.
SOAK_MINUTES ?= 30
soak: $(STAMP)
	.ci/docker-soak --minutes $(SOAK_MINUTES) $(if $(SOAK_SEED),--seed $(SOAK_SEED)) \
	    $(if $(SCENARIOS),--scenarios $(SCENARIOS))

services:
	@.ci/services

## browser: Debian's Chromium for the browser tests (tests/browser), installed if missing.
browser:
	@.ci/browser

requirements:
	$(BIN)/pip-compile --quiet --no-emit-index-url --no-emit-find-links --strip-extras \
	    --allow-unsafe -o requirements/base.txt requirements/base.in
	$(BIN)/pip-compile --quiet --no-emit-index-url --no-emit-find-links --strip-extras \
	    --allow-unsafe -o requirements/dev.txt requirements/dev.in
	$(BIN)/pip-compile --quiet --no-emit-index-url --no-emit-find-links --strip-extras \
	    --allow-unsafe -o requirements/docs.txt requirements/docs.in

clean:
	rm -rf $(VENV) site .venv-django6 .run .pytest_cache .mypy_cache .ruff_cache
