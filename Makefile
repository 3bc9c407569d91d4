# Everything a fresh Debian 12 machine (as root) needs is installed by `setup`;
# every other target depends on it and is quick once installed.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# SkyPilot (tests load sky/*.yaml with its own loader) pins protobuf below ours: its own virtualenv.
SKY_VENV := .venv-sky
SKY_STAMP := $(SKY_VENV)/.installed
APT_PACKAGES := wireguard-go wireguard-tools nftables iproute2 etcd-server etcd-client nebula iperf3 systemd jq dnsmasq-base dnsperf prometheus libfaketime serf $(if $(wildcard /usr/bin/kubectl),,kubernetes-client)
BENCH ?= all
PYTEST_ARGS ?=
# test files run in parallel, each whole in one worker (its module fixtures: one lab per file)
TEST_WORKERS ?= 2

.PHONY: setup apt demo demo-lab test bench proto lab-up lab-down clean

setup: $(STAMP) $(SKY_STAMP)

apt:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:" $$missing; \
	  if [ "$$(id -u)" -ne 0 ]; then echo "make setup: run as root to install $$missing" >&2; exit 1; fi; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

$(STAMP): requirements.lock pyproject.toml | apt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.lock
	$(PY) -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	@touch $(STAMP)

$(SKY_STAMP): sky/requirements.lock | apt
	@test -x $(SKY_VENV)/bin/python || $(PYTHON) -m venv $(SKY_VENV)
	$(SKY_VENV)/bin/python -m pip install -q --disable-pip-version-check -r sky/requirements.lock
	@touch $(SKY_STAMP)

proto: setup
	$(PY) -m grpc_tools.protoc -Iproto --python_out=. --pyi_out=. --grpc_python_out=. $(shell find proto -name "*.proto" | sort)

demo: setup
	$(PY) -m testbed.demo

demo-lab: setup
	@if [ "$$(id -u)" -ne 0 ]; then echo "make demo-lab: needs root (network namespaces)" >&2; exit 1; fi
	$(PY) -m testbed.lab.demo

test: setup
	MESH_REQUIRE_NETNS=1 $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder $(PYTEST_ARGS)

bench: setup
	$(PY) -m bench $(BENCH)

lab-up: setup
	$(PY) -m testbed.lab up

lab-down: setup
	$(PY) -m testbed.lab down

clean:
	rm -rf $(VENV) $(SKY_VENV) bench/out/*.json bench/out/*.png
