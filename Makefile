# crmops: two set-up commands on a fresh machine.
#   make demo   the nightly job on the embedded default (SQLite demo CRM, local repository)
#   make test   install everything (Debian packages, services, sandbox images), smoke-test the wheel as
#               installed for production (scripts/wheel_smoke.sh, README "Installing for production"), and run the tests,
#               in parallel: PYTEST_WORKERS (4) pytest-xdist workers, --dist loadgroup so tests marked
#               @pytest.mark.xdist_group("name") share one worker (docs/TESTING.md). Much of the suite waits on
#               servers, containers and subprocesses, so 4 workers on 2 cores cut the wall time.
#               One test serially: make test PYTEST_ARGS="-n0 -k name"
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PYTEST_WORKERS ?= 4
PYTEST_ARGS ?= -n $(PYTEST_WORKERS) --dist loadgroup
UPGRADE_BENCH_SIZE ?= medium
PITR_BENCH_SIZE ?= large
# sizes measured side by side by `make bench` (large only when asked: BENCH_SIZES="small medium large")
BENCH_SIZES ?= $(if $(BENCH_SIZE),$(BENCH_SIZE),small medium)

.PHONY: venv test testbed testbed-down testbed-status lint demo bench clean-demo

$(BIN)/crmops: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

venv: $(BIN)/crmops

testbed: venv
	bash scripts/testbed.sh up

testbed-down:
	bash scripts/testbed.sh down

testbed-status:
	bash scripts/testbed.sh status

test: testbed
	$(BIN)/ruff check crmops tests bench
	bash scripts/wheel_smoke.sh
	$(BIN)/pytest -p no:cacheprovider --timeout=900 --durations=10 $(PYTEST_ARGS)

lint: venv
	$(BIN)/ruff check crmops tests bench

# The main job on the embedded default: a SQLite demo CRM and a local repository
# under ./demo, no servers. Run it again to see deduplication at work.
demo: venv
	@set -e; C="$(BIN)/crmops"; \
	echo "== 1. a demo CRM (SQLite, with attachments) under ./demo"; \
	if test -f demo/crm.db; then echo "already there (make clean-demo starts afresh)"; \
	else $$C demo create --size small; fi; \
	echo "== 2. an encrypted repository (key file demo/repo.key)"; \
	if test -f demo/repo/config; then echo "already there"; else $$C repo init; fi; \
	echo "== 3. the nightly backup"; $$C backup --tag demo; \
	echo "== 4. a CRM user edits a contact; the next backup stores only what changed"; \
	$(BIN)/python -c "import sqlite3, time; c = sqlite3.connect('demo/crm.db'); c.execute('UPDATE contacts SET notes = ? WHERE id = 1', ('edited %s' % time.time(),)); c.commit()"; \
	$$C backup --tag demo; \
	echo "== 5. the snapshots"; $$C snapshots; \
	echo "== 6. the repository checks out (10% of the data read, in rotation)"; $$C check --read-data-subset 10%; \
	echo "== 7. a restore into a scratch database, attachments beside it"; \
	rm -rf demo/restored && mkdir -p demo/restored; \
	$$C restore latest --to sqlite:///demo/restored/crm.db --attachments-to demo/restored/attachments; \
	echo "== 8. what monitoring sees (exit 61 when red), and the status page for managers"; \
	$$C status; $$C --quiet report --html demo/status.html; echo "status page written to demo/status.html"; \
	echo "== done: see README.md for the tour, and crmops --help for everything else"

# Speed and memory against pg_dump, pg_restore, the usual openssl script and restic,
# verify against a bare pg_restore into the same kind of container, and the upgrade
# dry run's forecast against the real run and the engine upgrade's copy estimate against
# the real copy (on medium, the size their targets name, unless UPGRADE_BENCH_SIZE says
# otherwise), and point-in-time recovery's RPO, physical against logical restore and the WAL
# archive's cost (on large unless PITR_BENCH_SIZE says otherwise: its demo CRM is built once into
# /var/tmp/crmops-bench), and `crmops copy` (shared and own keys) beside `restic copy` at medium, and at
# large too when BENCH_SIZES names it, in one run; prints tables and writes bench/results.json (needs the test bed).
# Each of BENCH_SIZES in turn; the everyday commands run at every size, the wide undo once.
# BENCH_REALCRM=1 adds the real Django CRM's upgrade, dry run against real run per step, BENCH_REALCRM_RUNS
# times per engine (medians; about 5 minutes a run on two shared cores), and Tryton's staged 7.0 -> 8.0 as often
# (8-10 minutes a run)
BENCH_REALCRM_RUNS ?= 3
# bytecode first: an installed wheel has it, and with PYTHONDONTWRITEBYTECODE set a checkout would
# compile every crmops module from source in every measured command (0.03-0.15 CPU-s each)
bench: testbed
	$(BIN)/python -m compileall -q crmops
	@set -e; undo=700; for s in $(BENCH_SIZES); do \
	  $(BIN)/python bench/run.py --size $$s --undo-tables $$undo; undo=0; \
	  $(BIN)/python bench/verify_bench.py --size $$s; \
	done
	$(BIN)/python bench/upgrade_bench.py --size $(UPGRADE_BENCH_SIZE) --rounds 5
	$(BIN)/python bench/engine_upgrade_bench.py --size $(UPGRADE_BENCH_SIZE) --rounds 3
	PYTHONPATH=. $(BIN)/python -m bench.pitr_bench --size $(PITR_BENCH_SIZE)
	PYTHONPATH=. $(BIN)/python -m bench.copy_bench --size medium
	@case " $(BENCH_SIZES) " in *" large "*) PYTHONPATH=. $(BIN)/python -m bench.copy_bench --size large;; esac
	@if [ "$(BENCH_REALCRM)" = 1 ]; then PYTHONPATH=. $(BIN)/python -m bench.realcrm_bench --runs $(BENCH_REALCRM_RUNS); fi
	@if [ "$(BENCH_REALCRM)" = 1 ]; then PYTHONPATH=. $(BIN)/python -m bench.tryton_bench --runs $(BENCH_REALCRM_RUNS); fi

clean-demo:
	rm -rf demo
