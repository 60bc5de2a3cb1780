# cloudshell-fog: two commands on a fresh machine.
#   make run    creates .venv, installs, serves the gateway on :8080 (development mode)
#   make test   creates .venv, installs with test extras and system packages, runs the suite

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# Editable installs must use compat mode, or twistd cannot find the plugin (STACK-NOTES section 1).
PIP_INSTALL := $(BIN)/pip install --disable-pip-version-check -q -e
EDITABLE    := --config-settings editable_mode=compat
# Debian packages the tests need, as "command:package" pairs; installed when missing.
SYSTEM_DEPS := bash:bash ps:procps pgrep:procps setsid:util-linux ip:iproute2 ssh-keygen:openssh-client /usr/sbin/sshd:openssh-server

.PHONY: run test system-deps clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed-run: setup.py | $(BIN)/python
	$(PIP_INSTALL) . $(EDITABLE)
	touch $@

$(VENV)/.installed-test: setup.py | $(BIN)/python
	$(PIP_INSTALL) '.[test]' $(EDITABLE)
	touch $@ $(VENV)/.installed-run

# Development mode accepts any bearer token, so `make run` listens on loopback
# unless LISTEN_ADDR says otherwise (e.g. LISTEN_ADDR=:8080 make run).
run: $(VENV)/.installed-run
	LISTEN_ADDR="$${LISTEN_ADDR:-127.0.0.1:8080}" $(BIN)/twistd --nodaemon --pidfile= cloudshell-fog

system-deps:
	@missing=""; for pair in $(SYSTEM_DEPS); do \
	  command -v "$${pair%%:*}" >/dev/null 2>&1 || missing="$$missing $${pair#*:}"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages:$$missing"; \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; fi

test: system-deps $(VENV)/.installed-test
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
	find . -name dropin.cache -delete
