# txmsg developer commands.  The logic lives in scripts/; see scripts/*.sh.
#
#   make demo         set everything up (venv, deps, broker) and run the demo
#   make test         set everything up and run the whole test suite against RabbitMQ
#                     3.10 (localhost:5672) and 4.3 (a private node in a Debian sid
#                     root, scripts/rabbitmq4.sh); one broker: make test BROKERS=4.3
#                     or BROKERS=local; extra pytest arguments: PYTEST_ARGS="-k foo"
#   make broker4      start the RabbitMQ 4.3 node on localhost:5673 and leave it running
#   make test-twisted-lowest  the suite (unit, then RabbitMQ 3.10) on the lowest Twisted
#                     setup.cfg admits, in .venv-twisted-lowest (CI runs it after make test)
#   make lint         ruff + mypy (CI runs it before make test)
#   make docs         the API reference (pydoctor, warnings are errors) in docs/api/
#   make bench        txmsg against pika (Twisted and blocking), aio-pika and raw txAMQP on
#                     the same broker (installs the "bench" extra; BENCH_ARGS="--rounds 10")
#   make reliability  the fault scenarios at 5x their CI counts, one table of figures
#                     (scripts/reliability-report; REPORT_ARGS="--scale 10 --only 1,3")
#   make broker-stop  stop the RabbitMQ node the project started (if any)
#   make clean        stop the project's nodes, remove .venv, .txmsg and build output

VENV_PY := .venv/bin/python
PYTEST_ARGS ?=
BROKERS ?= local 4.3
#: the lowest Twisted setup.cfg admits (keep the two in step)
TWISTED_LOWEST := 23.10.0
LOWEST_VENV := $(CURDIR)/.venv-twisted-lowest

# When the project runs its own RabbitMQ node, scripts/ensure-broker.sh leaves a
# 'rabbitmqctl' for that node here; put it first on PATH for the tests and the
# demo (the directory does not exist when another broker is used).
ifeq ($(or $(TXMSG_BROKER_PORT),5672),5672)
RMQ_BIN := $(CURDIR)/.txmsg/rabbitmq/bin
else
RMQ_BIN := $(CURDIR)/.txmsg/rabbitmq-$(TXMSG_BROKER_PORT)/bin
endif
WITH_BROKER_PATH := PATH="$(RMQ_BIN):$$PATH"

.PHONY: all bootstrap demo test test-twisted-lowest lint docs bench reliability broker broker4 broker-stop clean

all: test

bootstrap:
	bash scripts/bootstrap.sh

demo: bootstrap
	$(WITH_BROKER_PATH) bash scripts/demo.sh

test: bootstrap
	TXMSG_BROKERS="$(BROKERS)" bash scripts/test.sh $(PYTEST_ARGS)

test-twisted-lowest:
	TXMSG_VENV="$(LOWEST_VENV)" TXMSG_TWISTED=$(TWISTED_LOWEST) bash scripts/bootstrap.sh
	TXMSG_VENV="$(LOWEST_VENV)" TXMSG_BROKERS="local" TXMSG_PACKAGING=skip bash scripts/test.sh $(PYTEST_ARGS)

docs:
	bash scripts/bootstrap.sh --no-broker
	rm -rf docs/api
	.venv/bin/pydoctor --quiet --warnings-as-errors --docformat=epytext --project-name=txmsg \
		--project-base-dir=. --html-output=docs/api txmsg
	@echo "docs: the API reference is docs/api/index.html"

lint:
	bash scripts/bootstrap.sh --no-broker
	.venv/bin/ruff check txmsg tests bench examples scripts twisted
	.venv/bin/mypy txmsg

bench: bootstrap
	$(VENV_PY) -m pip install -q ".[bench]"
	$(VENV_PY) -m bench.run --ceiling $(BENCH_ARGS)

reliability:
	bash scripts/reliability-report $(REPORT_ARGS)

broker:
	bash scripts/ensure-broker.sh

broker4:
	bash scripts/rabbitmq4.sh start

broker-stop:
	bash scripts/broker-stop.sh
	bash scripts/rabbitmq4.sh stop

clean:
	bash scripts/broker-stop.sh --all
	bash scripts/rabbitmq4.sh stop
	rm -rf --one-file-system .venv .venv-twisted-lowest .txmsg docs/api build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache twisted/plugins/dropin.cache
	find . -path ./.git -prune -o -type d -name __pycache__ -prune -exec rm -rf {} +
