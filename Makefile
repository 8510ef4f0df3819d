# skiff: `make demo` and `make test` do all set-up from a fresh clone.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

VENV := $(CURDIR)/.venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
COLLECTION_LINK := $(CURDIR)/.cache/collections/ansible_collections/skiff/fleet
DEMO_INVENTORY := inventories/demo

export PATH := $(BIN):$(PATH)
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
export ANSIBLE_COLLECTIONS_PATH := $(CURDIR)/.cache/collections
export ANSIBLE_FORCE_COLOR ?= 0
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: help setup demo demo-teardown demo-hybrid demo-hybrid-teardown test lint unit integration build clean molecule molecule-setup images
.PHONY: gates gates-setup sanity ansible-lint galaxy-importer changelog-lint docs-lint mypy

help:
	@echo "make demo          - build a three-site application network on this machine and use it"
	@echo "make demo-teardown - remove the demo network"
	@echo "make demo-hybrid   - the same with three platforms: kubernetes (podman kube play),"
	@echo "                     local and systemd (a Debian host container); needs root"
	@echo "make demo-hybrid-teardown - remove it"
	@echo "make test          - lint and run every test (molecule included)"
	@echo "make molecule      - the molecule scenario alone (systemd and podman sites)"
	@echo "make build         - build the collection tarball into build/"
	@echo "make bench-fleet   - time rollouts of 4, 16 and 48 local sites against a ping play"
	@echo "make gates         - Ansible's own gates: ansible-test sanity, ansible-lint production,"
	@echo "                     galaxy-importer, antsibull-changelog/-docs lint, mypy (part of make test)"

# System packages a fresh Debian machine may lack (python3-venv); needs root there.
$(CURDIR)/.cache/system.ok: scripts/bootstrap-system
	@mkdir -p $(@D)
	bash scripts/bootstrap-system
	@touch $@

$(STAMP): requirements-dev.txt router/pyproject.toml $(CURDIR)/.cache/system.ok
	rm -rf $(VENV)
	python3 -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	$(BIN)/pip install --quiet --disable-pip-version-check -e ./router
	@touch $@

$(COLLECTION_LINK):
	@mkdir -p $(@D)
	ln -sfn ../../../.. $@

setup: $(STAMP) $(COLLECTION_LINK)

demo: setup
	$(BIN)/python scripts/demo_backend.py start
	ansible-playbook -i $(DEMO_INVENTORY) playbooks/site.yml
	$(BIN)/python scripts/demo_show.py $(DEMO_INVENTORY)

demo-teardown: setup
	ansible-playbook -i $(DEMO_INVENTORY) playbooks/teardown.yml
	$(BIN)/python scripts/demo_backend.py stop

# The hybrid network: a kubernetes site run by `podman kube play`, a local site and
# a systemd site on a Debian host container (inventories/hybrid). Needs root.
demo-hybrid: images
	CONTAINERS_CONF=$(CONTAINERS_CONF_FILE) $(BIN)/python scripts/demo_hybrid.py up
	CONTAINERS_CONF=$(CONTAINERS_CONF_FILE) $(BIN)/python scripts/demo_hybrid.py show

demo-hybrid-teardown: setup
	CONTAINERS_CONF=$(CONTAINERS_CONF_FILE) $(BIN)/python scripts/demo_hybrid.py down

lint: setup
	ruff check .
	ruff format --check .
	ansible-playbook --syntax-check -i $(DEMO_INVENTORY) playbooks/site.yml playbooks/plan.yml playbooks/teardown.yml \
	  playbooks/decommission.yml

unit: setup
	pytest -q tests/unit router/tests -m "not integration"

# Debian's chromium for the console's browser test; needs root where it is missing.
$(CURDIR)/.cache/browser.ok: scripts/bootstrap-browser
	@mkdir -p $(@D)
	bash scripts/bootstrap-browser
	@touch $@

# `images` first: the `podman kube play` tier (tests/integration/test_kube_play.py)
# builds the router image on the local base image.
test: setup lint gates images $(CURDIR)/.cache/browser.ok
	pytest -q -p no:cacheprovider tests router/tests
	$(MAKE) molecule

# --- molecule: systemd and podman sites on Debian hosts with systemd as PID 1 ---
# podman reads CONTAINERS_CONF from a file under .cache/ written by
# scripts/bootstrap-podman, never a user's own containers.conf.
CONTAINERS_CONF_FILE := $(CURDIR)/.cache/containers.conf
MOLECULE_STAMP := $(VENV)/.molecule-installed
ANSIBLE_WHEEL := ansible==12.3.0
PODMAN_COLLECTION := $(CURDIR)/.cache/collections/ansible_collections/containers/podman/MANIFEST.json

$(CURDIR)/.cache/podman.ok: scripts/bootstrap-podman
	bash scripts/bootstrap-podman $(CONTAINERS_CONF_FILE)
	@touch $@

$(MOLECULE_STAMP): requirements-molecule.txt $(STAMP)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements-molecule.txt
	@touch $@

$(PODMAN_COLLECTION): requirements-molecule.txt
	@mkdir -p .cache/wheels
	$(BIN)/pip download --quiet --disable-pip-version-check --no-deps $(ANSIBLE_WHEEL) -d .cache/wheels
	$(BIN)/python -c 'import sys, zipfile; z = zipfile.ZipFile(sys.argv[1]); \
	  z.extractall(sys.argv[2], [n for n in z.namelist() if n.startswith("ansible_collections/containers/podman/")])' \
	  .cache/wheels/ansible-$(subst ansible==,,$(ANSIBLE_WHEEL))-py3-none-any.whl .cache/collections
	@touch $@

# The router's pinned prometheus-client is newer than Debian 12's; hosts get it as a pure wheel.
ROUTER_EXTRA_WHEELS := $(CURDIR)/.cache/wheels/prometheus_client-0.23.1-py3-none-any.whl
$(ROUTER_EXTRA_WHEELS):
	$(BIN)/pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
	  prometheus-client==0.23.1 -d .cache/wheels

molecule-setup: setup $(CURDIR)/.cache/podman.ok $(MOLECULE_STAMP) $(PODMAN_COLLECTION) $(ROUTER_EXTRA_WHEELS)

# Images from Debian packages (mmdebstrap + podman import); rebuilt only when missing or changed.
images: molecule-setup
	CONTAINERS_CONF=$(CONTAINERS_CONF_FILE) bash scripts/build-test-images .cache/images

# The scenario's container and network names are fixed: one molecule run at a
# time per machine (other checkouts on the same machine wait for the lock).
molecule: images
	CONTAINERS_CONF=$(CONTAINERS_CONF_FILE) PY_COLORS=0 ANSIBLE_NOCOLOR=1 \
	  flock /tmp/skiff-molecule.lock molecule test -s default

build: setup
	ansible-galaxy collection build --force --output-path build/

clean:
	rm -rf .venv .cache build .demo

# Data-plane benchmark (not part of `make test`; see bench/README.md). QUICK=1: short run.
.PHONY: bench
bench: setup
	bash bench/ensure-tools
	$(BIN)/python -m bench.run $(if $(filter 1 yes true,$(QUICK)),--quick) $(BENCH_ARGS)

# Fleet rollout benchmark (not part of `make test`): first run, converged re-run and a
# ping play on 4, 16 and 48 local sites. SIZES=4,16 REPS=1 for a short run. One
# benchmark at a time per machine.
.PHONY: bench-fleet
bench-fleet: setup
	flock /tmp/skiff-bench.lock $(BIN)/python -m bench.fleet.run \
	  $(if $(SIZES),--sizes $(SIZES)) $(if $(REPS),--reps $(REPS)) $(BENCH_ARGS)
# --- gates: what Ansible's own tooling and Galaxy check (README "Gates") ---
# The gate tools live in their own virtualenv, every package pinned in
# requirements-gates.txt (galaxy-importer and ansible-lint pin their own
# ranges that need not agree with the project's tool chain). ansible-core is
# the same pinned version as in .venv.
GATES_VENV := $(CURDIR)/.cache/gates-venv
GATES_BIN := $(GATES_VENV)/bin
GATES_STAMP := $(GATES_VENV)/.installed
GATES_ENV := PATH=$(GATES_BIN):$(PATH)
# ansible-test keeps its per-test virtualenvs (pinned by ansible-test itself)
# under $HOME/.ansible/test; HOME points into .cache so a run neither reads nor
# writes the user's home, and get_pip.py stands in for the bootstrap script it
# would download from a host that is not reachable.
ANSIBLE_TEST_HOME := $(CURDIR)/.cache/ansible-test-home
ANSIBLE_TEST_PIP := 24.2
SANITY_ROOT := $(CURDIR)/.cache/sanity
SANITY_COLLECTION := $(SANITY_ROOT)/ansible_collections/skiff/fleet
COLLECTION_VERSION = $(shell sed -n 's/^version: *//p' galaxy.yml)
# Each gate prints whether it passed and how long it took (the CI budget is
# read from these lines), also when it fails.
gate_timer = start=$$(date +%s); trap 'rc=$$?; echo "gate $@: $$(test $$rc -eq 0 && echo passed || echo FAILED) in $$(( $$(date +%s) - start )) s"; exit $$rc' EXIT

$(GATES_STAMP): requirements-gates.txt $(CURDIR)/.cache/system.ok
	rm -rf $(GATES_VENV)
	python3 -m venv $(GATES_VENV)
	$(GATES_BIN)/pip install --quiet --disable-pip-version-check -r requirements-gates.txt
	@touch $@

$(ANSIBLE_TEST_HOME)/.ansible/test/cache/get_pip_$(subst .,_,$(ANSIBLE_TEST_PIP)).py: scripts/gates/get_pip.py
	@mkdir -p $(@D)
	cp $< $@

gates-setup: setup $(GATES_STAMP) $(ANSIBLE_TEST_HOME)/.ansible/test/cache/get_pip_$(subst .,_,$(ANSIBLE_TEST_PIP)).py

gates: sanity ansible-lint galaxy-importer changelog-lint docs-lint mypy

# ansible-test sanity, every test, on the controller's Python (tests/config.yml
# says which Pythons the modules support; the ignore file says why each line).
sanity: gates-setup
	@$(gate_timer); \
	$(GATES_BIN)/python scripts/gates/stage_collection.py $(CURDIR) $(SANITY_ROOT) >/dev/null; \
	cd $(SANITY_COLLECTION) && HOME=$(ANSIBLE_TEST_HOME) $(GATES_ENV) \
	  ansible-test sanity --python 3.11 --color no

ansible-lint: gates-setup
	@$(gate_timer); \
	$(GATES_ENV) ansible-lint --profile production --offline --nocolor

# Fragments and changelog.yaml lint clean, and CHANGELOG.rst is what they render.
changelog-lint: gates-setup
	@$(gate_timer); \
	$(GATES_ENV) antsibull-changelog lint; \
	$(GATES_ENV) antsibull-changelog lint-changelog-yaml changelogs/changelog.yaml; \
	$(GATES_ENV) antsibull-changelog generate --output .cache/CHANGELOG.rst --output-format rst; \
	cmp -s .cache/CHANGELOG.rst CHANGELOG.rst || { \
	  echo "CHANGELOG.rst differs from what changelogs/ renders: run antsibull-changelog generate" >&2; exit 1; }

docs-lint: gates-setup
	@$(gate_timer); \
	$(GATES_ENV) antsibull-docs lint-collection-docs --plugin-docs --skip-rstcheck .

mypy: gates-setup
	@$(gate_timer); \
	$(GATES_BIN)/mypy --python-executable $(BIN)/python

# Galaxy's importer on the built tarball, offline (tests/galaxy-importer.cfg):
# it runs ansible-doc and ansible-lint itself; any WARNING or ERROR fails. It
# sees only the tarball: not this checkout's ansible.cfg (roles_path) nor its
# collections path.
galaxy-importer: gates-setup
	@$(gate_timer); \
	rm -rf .cache/galaxy-importer && mkdir -p .cache/galaxy-importer; \
	ansible-galaxy collection build --output-path .cache/galaxy-importer >/dev/null; \
	cd .cache/galaxy-importer && \
	env -u ANSIBLE_CONFIG -u ANSIBLE_COLLECTIONS_PATH \
	  GALAXY_IMPORTER_CONFIG=$(CURDIR)/tests/galaxy-importer.cfg $(GATES_ENV) \
	  python -m galaxy_importer.main skiff-fleet-$(COLLECTION_VERSION).tar.gz > import.log 2>&1 \
	  || { cat import.log; exit 1; }; \
	if grep -E '^(WARNING|ERROR)' import.log; then echo "galaxy-importer: see .cache/galaxy-importer/import.log" >&2; exit 1; fi
