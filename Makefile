# enot-builder: `make run` to start a server, `make test` to run the test suite.
# Both install everything first; `make install` is the install part alone.

# Both virtualenvs are made on the system Python when there is one: the service user
# runs the server from .venv (systemd/enot-builder.service), the build user runs enot
# from .venv-enot inside the sandbox, and neither can read a pyenv Python under /root.
SYSTEM_PYTHON := $(shell [ -x /usr/bin/python3 ] && echo /usr/bin/python3 || echo python3)
PYTHON    ?= $(SYSTEM_PYTHON)
ENOT_PYTHON ?= $(SYSTEM_PYTHON)
VENV      := .venv
ENOT_VENV := .venv-enot
CONFIG    ?=
SYSTEM_USER := enot-builder
# gcc and libc6-dev: enot compiles the C of packages with NIFs. slirp4netns and iproute2:
# a build's own network namespace. systemd: the unit in systemd/ is checked with
# systemd-analyze (verify, security) by the tests. rebar3 and rebar (2): the second
# compiler, for the rebar projects enot cannot build (enot_builder/fallback.py).
APT_PACKAGES := git erlang-nox erlang-dev postgresql bubblewrap slirp4netns iproute2 util-linux python3-venv gcc libc6-dev make systemd rebar3 rebar
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

.PHONY: help install system-deps test-deps run demo test fuzz bench bench-deps corpus lint clean

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
	@# slirp4netns opens /dev/net/tun as the build user (a build's network). Debian's udev
	@# makes it 0666; a container without udev leaves it 0600, and every networked step fails.
	@if [ "$$(id -u)" -eq 0 ] && [ -c /dev/net/tun ] && [ "$$(stat -c %a /dev/net/tun)" != 666 ]; then \
	  echo "Making /dev/net/tun usable by the build user (mode 0666, as Debian's udev sets it)"; \
	  chmod 0666 /dev/net/tun; \
	fi

# $(call stale,<venv>,<python>): FORCE when <venv> was made on another Python (an
# older checkout used the first python3 on PATH): it is then made again from scratch.
stale = $(shell [ -f $(1)/pyvenv.cfg ] && ! grep -qxF "home = $$(dirname "$$($(2) -c 'import sys; print(sys.executable)')")" $(1)/pyvenv.cfg && echo FORCE)
VENV_STALE := $(call stale,$(VENV),$(PYTHON))
ENOT_VENV_STALE := $(call stale,$(ENOT_VENV),$(ENOT_PYTHON))
FORCE:

$(VENV)/.installed: setup.cfg pyproject.toml $(VENV_STALE)
	$(PYTHON) -m venv $(if $(VENV_STALE),--clear) $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $@

# enot 2.1.8 lives in a virtualenv of its own: its dependency erl_terms needs an
# old setuptools and no build isolation, and pins parsimonious 0.7, which does not
# import on Python 3.11 (collections.Mapping); parsimonious>=0.10 works. So their
# dependencies go in first, with parsimonious>=0.10, then enot and erl_terms without
# theirs: pip then has no conflict to report (an alarming ERROR on every install).
ENOT_DEPENDENCIES := 'parsimonious>=0.10,<1' docopt gitpython artifactory appdirs boto3 \
	Jinja2 mock pytest tinydb requests requests-mock
$(ENOT_VENV)/.installed: $(ENOT_VENV_STALE)
	$(ENOT_PYTHON) -m venv $(if $(ENOT_VENV_STALE),--clear) $(ENOT_VENV)
	$(ENOT_VENV)/bin/pip install -q 'setuptools<58' wheel $(ENOT_DEPENDENCIES)
	$(ENOT_VENV)/bin/pip install -q --no-build-isolation --no-deps erl_terms==0.1.5 enot==2.1.8
	$(ENOT_VENV)/bin/python -c 'import enot.__main__'
	touch $@

run: install  ## install, migrate and serve on 127.0.0.1:8080
	$(VENV)/bin/enot-builder migrate $(if $(CONFIG),--config $(CONFIG))
	exec $(VENV)/bin/enot-builder serve $(if $(CONFIG),--config $(CONFIG))

demo: install  ## offline walk-through: a tagged local repository built, then fetched by enot
	$(VENV)/bin/python demo/run.py $(DEMO_ARGS)

# What some tests need beyond `install`: Debian's chromium for the browser test (never
# a browser Playwright downloads; without recommended packages, which would pull a
# desktop's worth: the test runs it headless with --no-sandbox) and systemd's
# systemd-analyze for the unit check, nginx for the test of deploy/nginx.conf. As root
# they are installed; otherwise those tests skip, except under CI (`CI` set), where a missing prerequisite fails the run
# here, and the tests that need it fail too: a green CI ran every test.
TEST_APT_PACKAGES := chromium systemd nginx-light
test-deps:  ## install what the browser and systemd tests need (as root; CI fails without)
	@missing=""; \
	for pkg in $(TEST_APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$pkg 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$pkg"; \
	done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then \
	  echo "Installing:$$missing"; \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive \
	    apt-get install -y -q --no-install-recommends $$missing && exit 0; \
	  echo "Could not install:$$missing"; \
	else \
	  echo "Missing Debian packages for some tests:$$missing"; \
	  echo "Run as root: apt-get update && apt-get install -y --no-install-recommends$$missing"; \
	fi; \
	if [ -n "$$CI" ]; then echo "CI is set: tests that need them would not run; failing."; exit 1; fi; \
	echo "The tests that need them will be skipped."

test: install test-deps  ## install and run the whole test suite
	$(VENV)/bin/pytest $(PYTEST_ARGS)

# Left out of `make test` (setup.cfg deselects the `fuzz` marker); CI runs both.
fuzz: install  ## fuzz a live server: raw-HTTP attacks, then schemathesis with every check (about 4 min)
	$(VENV)/bin/pytest -m fuzz tests/test_fuzz.py $(PYTEST_ARGS)

# The figures in bench/RESULTS.md come from this run's JSON only (bench/report.py),
# naming the commit and the machine: commit both files together.
bench: install bench-deps  ## run the benchmark suite, write bench/RESULTS.md (about 8 min; see bench/README.md)
	$(VENV)/bin/python -m bench --json bench/results.json $(BENCH_ARGS)
	$(VENV)/bin/python -m bench.report bench/results.json -o bench/RESULTS.md

# CORPUS_DIR holds git repositories of real libraries as <owner>/<name> (never
# committed; bench/CORPUS.md says how they were fetched); they are served as GitHub.
CORPUS_DIR ?= corpus
corpus: install  ## build real Erlang libraries from CORPUS_DIR, print library/result/compiler/time (bench/CORPUS.md)
	$(VENV)/bin/python -m bench.corpus $(CORPUS_DIR) --list bench/corpus.txt $(CORPUS_ARGS)

bench-deps:
	$(call apt_install,$(BENCH_APT_PACKAGES), for the bench)

lint:  ## ruff over the package and tests
	$(VENV)/bin/pip install -q ruff
	$(VENV)/bin/ruff check enot_builder tests bench demo

clean:  ## remove the virtualenvs and build output (keeps data/)
	rm -rf $(VENV) $(ENOT_VENV) build *.egg-info
