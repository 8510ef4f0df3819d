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

.PHONY: help setup demo demo-teardown test lint unit integration build clean

help:
	@echo "make demo          - build a three-site application network on this machine and use it"
	@echo "make demo-teardown - remove the demo network"
	@echo "make test          - lint and run every test"
	@echo "make build         - build the collection tarball into build/"

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

lint: setup
	ruff check .
	ruff format --check .
	ansible-playbook --syntax-check -i $(DEMO_INVENTORY) playbooks/site.yml playbooks/teardown.yml

unit: setup
	pytest -q tests/unit router/tests -m "not integration"

test: setup lint
	pytest -q -p no:cacheprovider tests router/tests

build: setup
	ansible-galaxy collection build --force --output-path build/

clean:
	rm -rf .venv .cache build .demo
