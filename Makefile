# fognode: `make run` starts a node on embedded defaults, `make test` runs the whole suite.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
DATADIR ?= $(or $(FOGNODE_DATADIR),$(HOME)/.fognode)
# `make run` is the development path: without FOGNODE_PASSPHRASE the node's wallet is a dev
# keystore with an empty passphrase (the daemon says so loudly). Set it for a real wallet.
run: export FOGNODE_PASSPHRASE ?=

.PHONY: run test bench devnet clean install system-deps
# Programs the tests drive (tests/monitor: the dashboard in headless Chromium, `fognode-cli top`
# under tmux). Installed with apt-get when missing and we are root (CI is); otherwise those
# tests skip, saying what is missing.
SYSTEM_DEPS := chromium tmux

$(VENV)/.installed: pyproject.toml setup.py
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "installing fognode and its dependencies into $(VENV) (log: $(VENV)/install.log)"
	@$(PY) -m pip install --disable-pip-version-check -q -e '.[test]' > $(VENV)/install.log 2>&1 \
		|| { grep -v "is ignored: it is neither" $(VENV)/install.log; exit 1; }
	@touch $@

install: $(VENV)/.installed

run: $(VENV)/.installed
	@test -f $(DATADIR)/identity.key || $(VENV)/bin/fognode init --datadir $(DATADIR)
	$(VENV)/bin/fognode run --datadir $(DATADIR)

system-deps:
	@missing=""; for p in $(SYSTEM_DEPS); do command -v $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			echo "installing$$missing (apt-get; log: /tmp/fognode-apt.log)"; \
			{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; } \
				> /tmp/fognode-apt.log 2>&1 || { tail -20 /tmp/fognode-apt.log; exit 1; }; \
		else echo "not installing$$missing (needs root and apt-get): the tests that drive them will skip"; fi; \
	fi

# the suite on TEST_WORKERS pytest-xdist workers (tests/conftest.py puts the multi-process
# scenarios in lanes: `--dist loadgroup`); `make test TEST_WORKERS=0` runs it in one process.
TEST_WORKERS ?= 3
test: $(VENV)/.installed system-deps
	$(PY) -m pytest -q $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadgroup) --durations=15

devnet: $(VENV)/.installed
	$(VENV)/bin/fognode devnet --nodes 4

clean:
	rm -rf $(VENV) build *.egg-info
