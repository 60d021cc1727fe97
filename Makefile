# enot-builder: `make run` to start a server, `make test` to run the test suite.
# Both install everything first; `make install` is the install part alone.

PYTHON    ?= python3
# enot runs inside the build sandbox as an unprivileged user, so its Python must be
# one that user can read: the system one when there is one.
ENOT_PYTHON ?= $(shell [ -x /usr/bin/python3 ] && echo /usr/bin/python3 || echo python3)
VENV      := .venv
ENOT_VENV := .venv-enot
CONFIG    ?=
SYSTEM_USER := enot-builder
# gcc and libc6-dev: enot compiles the C of packages with NIFs.
APT_PACKAGES := git erlang-nox erlang-dev postgresql bubblewrap util-linux python3-venv gcc libc6-dev make
BENCH_APT_PACKAGES := nginx-light wrk curl

# $(call apt_install,<packages>,<what for>): install the missing Debian packages with
# apt-get as root; as anybody else print the exact command and stop.
define apt_install
	@missing=""; \
	for pkg in $(1); do \
	  dpkg-query -W -f='$${Status}' $$pkg 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$pkg"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" -ne 0 ]; then \
	    echo "Missing Debian packages$(2):$$missing"; \
	    echo "Run as root: apt-get update && apt-get install -y$$missing"; \
	    exit 1; \
	  fi; \
	  echo "Installing:$$missing"; \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	fi
endef

.PHONY: help install system-deps test-deps run test fuzz bench bench-deps lint clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

install: system-deps $(VENV)/.installed $(ENOT_VENV)/.installed  ## install the server, the enot tool and what they need

# Debian packages through apt-get, only when something is missing. As a normal
# user we print the exact command instead of asking for a password.
system-deps:  ## install missing Debian packages (git, Erlang, PostgreSQL, bubblewrap)
	$(call apt_install,$(APT_PACKAGES),)
	@if [ "$$(id -u)" -eq 0 ] && ! id -u $(SYSTEM_USER) >/dev/null 2>&1; then \
	  echo "Creating system user $(SYSTEM_USER)"; \
	  useradd --system --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin $(SYSTEM_USER); \
	fi

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $@

# enot 2.1.8 lives in a virtualenv of its own: its dependency erl_terms needs an
# old setuptools and no build isolation, and pins parsimonious 0.7, which does not
# import on Python 3.11 (collections.Mapping); parsimonious>=0.10 works.
$(ENOT_VENV)/.installed:
	$(ENOT_PYTHON) -m venv $(ENOT_VENV)
	$(ENOT_VENV)/bin/pip install -q 'setuptools<58' wheel
	$(ENOT_VENV)/bin/pip install -q --no-build-isolation erl_terms==0.1.5
	$(ENOT_VENV)/bin/pip install -q enot==2.1.8
	$(ENOT_VENV)/bin/pip install -q 'parsimonious>=0.10,<1'
	$(ENOT_VENV)/bin/python -c 'import enot.__main__'
	touch $@

run: install  ## install, migrate and serve on 127.0.0.1:8080
	$(VENV)/bin/enot-builder migrate $(if $(CONFIG),--config $(CONFIG))
	exec $(VENV)/bin/enot-builder serve $(if $(CONFIG),--config $(CONFIG))

# The browser test drives Debian's chromium (never a browser Playwright downloads).
# Without root it cannot be installed here: say so and go on; that test then skips.
test-deps:  ## install chromium for the browser test (as root; skipped otherwise)
	@if [ -x /usr/bin/chromium ]; then :; \
	elif [ "$$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then \
	  echo "Installing: chromium"; \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium \
	    || echo "Could not install chromium; the browser test will be skipped"; \
	else \
	  echo "chromium is missing; the browser test will be skipped."; \
	  echo "Run as root: apt-get update && apt-get install -y chromium"; \
	fi

test: install test-deps  ## install and run the whole test suite
	$(VENV)/bin/pytest $(PYTEST_ARGS)

# Left out of `make test` (setup.cfg deselects the `fuzz` marker); CI runs both.
fuzz: install  ## fuzz a live server: raw-HTTP attacks, then schemathesis with every check (about 4 min)
	$(VENV)/bin/pytest -m fuzz tests/test_fuzz.py $(PYTEST_ARGS)

bench: install bench-deps  ## run the benchmark suite against a real server (about 5 min; see bench/README.md)
	$(VENV)/bin/python -m bench $(BENCH_ARGS)

bench-deps:
	$(call apt_install,$(BENCH_APT_PACKAGES), for the bench)

lint:  ## ruff over the package and tests
	$(VENV)/bin/pip install -q ruff
	$(VENV)/bin/ruff check enot_builder tests bench

clean:  ## remove the virtualenvs and build output (keeps data/)
	rm -rf $(VENV) $(ENOT_VENV) build *.egg-info
