# edge-node: `make test` and `make demo` work on a fresh Debian 12 / Raspberry Pi OS machine.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed
SUDO    = $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)

.PHONY: test test-long demo demo-fleet bench bench-peer lint system-deps clean demo-city vendor-leaflet

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || { \
	  echo "installing python3-venv with apt-get"; \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq python3-venv; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

# Mosquitto and PostgreSQL (the tests, the demo and the benchmarks start their own, on a free
# loopback port; the city's database tests run PostgreSQL from Debian's binaries in a temp dir).
system-deps:
	@if ! command -v mosquitto >/dev/null && [ ! -x /usr/sbin/mosquitto ]; then \
	  echo "installing mosquitto with apt-get"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq mosquitto mosquitto-clients >/dev/null; \
	fi
	@if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
	  echo "installing postgresql with apt-get"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq postgresql >/dev/null; \
	fi
	@# Aedes, the second broker of tests/test_second_broker.py, on Debian's Node.js.
	@if ! command -v npm >/dev/null; then \
	  echo "installing nodejs and npm with apt-get"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq nodejs npm >/dev/null; \
	fi
	@[ -d tests/aedes/node_modules/aedes ] || npm ci --prefix tests/aedes --no-audit --no-fund --loglevel=error
	@if ! command -v chromium >/dev/null; then \
	  echo "installing chromium with apt-get (the map's browser test)"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium >/dev/null; \
	fi

# Three workers, one test file each at a time (its module and session servers stay shared):
# the suite waits more than it computes. TEST_WORKERS=0 runs it in one process. A failed test
# runs once more and is listed as RERUN in the summary (a failure twice fails the run).
TEST_WORKERS ?= 3
test: $(STAMP) system-deps
	$(PY) -m pytest $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile) --reruns 1 -raR

# The soak/fault tests in their long form (CI runs the short one).
test-long: $(STAMP) system-deps
	EDGE_NODE_SOAK=1 $(PY) -m pytest -m soak

demo: $(STAMP) system-deps
	$(VENV)/bin/edge-node demo

bench: $(STAMP) system-deps bench-peer
	$(PY) -m bench.run --out bench/results.json

# The peer that `make bench` measures beside ours: ThingsBoard IoT Gateway, in its own venv.
PEER_VENV = bench/.peer-venv
$(PEER_VENV)/.installed:
	$(PYTHON) -m venv $(PEER_VENV)
	$(PEER_VENV)/bin/python -m pip install -q thingsboard-gateway==3.8.5
	touch $@

bench-peer: $(PEER_VENV)/.installed

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache

# 50 simulated nodes against a local Mosquitto, and the operator's live fleet view beside them.
demo-fleet: $(STAMP) system-deps
	$(PY) -m operations.demo_fleet

# A simulated Terrassa (nodes on its streets, a day of history, one in fog, one offline) through
# Mosquitto and ingest into a database, `edge-node serve` with the map, opened in the browser.
demo-city: $(STAMP) system-deps
	$(PY) -m operations.democity

# The map's Leaflet, fetched again from the npm registry and checked against the tarball shipped
# (city/static/vendor/leaflet/VENDORED.md); the page itself never fetches anything.
LEAFLET_SHA256 = 84c65a256e50657896f54c33bd857b6849ebe94c817803be818bf32a3dde0b77
vendor-leaflet:
	@tmp=$$(mktemp -d) && cd $$tmp && npm pack leaflet@1.9.4 --silent >/dev/null && \
	  echo "$(LEAFLET_SHA256)  leaflet-1.9.4.tgz" | sha256sum -c --quiet && tar xzf leaflet-1.9.4.tgz && \
	  cp package/dist/leaflet.js package/dist/leaflet.css package/LICENSE $(CURDIR)/city/static/vendor/leaflet/ && \
	  cp package/dist/images/*.png $(CURDIR)/city/static/vendor/leaflet/images/ && rm -rf $$tmp && \
	  echo "city/static/vendor/leaflet: Leaflet 1.9.4 from npm, checksum verified"
