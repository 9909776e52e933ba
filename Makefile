# The two commands for a new user: `make run` and `make test`. Both work on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install run test lint typecheck pytest pytest-redis test-deps bench fuzz soak reliability \
	conformance clean image image-deps test-image

install: $(STAMP)

# Re-installs only when pyproject.toml changes (or the venv is missing).
$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python >= 3.11 is needed")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

# Starts the gateway on its embedded defaults (SIP on 0.0.0.0:5060 UDP+TCP, SQLite in ./data).
# `make run CONFIG=gateway.toml` uses a configuration file instead.
run: install
	$(BIN)/gb28181-gateway run $(if $(CONFIG),--config $(CONFIG))

# Debian packages the tests need: SIPp (sip-tester); redis-server (the cluster's shared store:
# the tests start their own instances on loopback, never the system's service); chromium (the
# conformance report and the web console are looked at in a real browser; Playwright drives this
# binary and downloads none), with a Chinese font so the console's screenshots are readable;
# buildah and debootstrap (the container image is built and run by the tests marked `image`).
test-deps:
	@missing=""; \
	command -v sipp >/dev/null 2>&1 || missing="$$missing sip-tester"; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	command -v redis-server >/dev/null 2>&1 || missing="$$missing redis-server"; \
	command -v buildah >/dev/null 2>&1 || missing="$$missing buildah"; \
	command -v debootstrap >/dev/null 2>&1 || missing="$$missing debootstrap"; \
	test -f /usr/share/fonts/truetype/wqy/wqy-microhei.ttc || missing="$$missing fonts-wqy-microhei"; \
	if [ -n "$$missing" ]; then \
		echo "installing$$missing"; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

lint: install
	$(BIN)/ruff check gateway conformance tests bench

typecheck: install
	$(BIN)/mypy --strict gateway

# The tests run in PYTEST_WORKERS processes (pytest-xdist): most of them wait on timers and
# sockets, so even 2 cores run several at once. Then the few marked `serial` (storms with
# timing-sensitive checks) run alone. Both passes run; either failing fails the target.
PYTEST_WORKERS ?= 4
pytest: install test-deps
	@status=0; \
	$(BIN)/pytest --durations=25 -n $(PYTEST_WORKERS) --dist loadgroup -m "not serial" || status=$$?; \
	$(BIN)/pytest --durations=10 -m serial || status=$$?; \
	exit $$status

# The registrar, uplink, runtime-upper and API tests again with every gateway's store in Redis
# (tests/conftest.py: GB_TEST_STORE=redis), so one node on Redis behaves as one on SQLite; about
# a minute. The two deselected tests read the store with the command line, which reads SQLite.
REDIS_TESTS := tests/downlink/test_registrar.py tests/uplink/test_uplink.py \
	tests/uplink/test_runtime_uppers.py tests/api/test_units_accounts.py \
	tests/api/test_users_tokens_audit.py tests/api/test_uppers.py \
	--deselect tests/uplink/test_uplink.py::test_recode_ids_are_valid_in_the_uppers_namespace_and_stable_across_restart \
	--deselect tests/api/test_users_tokens_audit.py::test_cli_user_add_then_login_over_http
pytest-redis: install test-deps
	GB_TEST_STORE=redis $(BIN)/pytest -q -n $(PYTEST_WORKERS) --dist loadgroup $(REDIS_TESTS)

test: install test-deps lint typecheck pytest pytest-redis

bench: install test-deps
	$(BIN)/python bench/sip_codec.py
	$(BIN)/python bench/register.py
	$(BIN)/python bench/catalog.py
	$(BIN)/python bench/catalog.py --transport udp
	$(BIN)/python bench/uplink.py
	$(BIN)/python bench/relay.py
	$(BIN)/python bench/edge.py
	$(BIN)/python bench/api.py
	$(BIN)/python bench/preview.py

# Wire fuzzing against a gateway process for ten minutes (the test suite runs 40 seconds of it).
# FUZZ_SECONDS and FUZZ_SEED change the run; the JSON report goes to stdout, exit 1 on findings.
FUZZ_SECONDS ?= 600
fuzz: install
	$(BIN)/python bench/fuzz.py --seconds $(FUZZ_SECONDS) $(if $(FUZZ_SEED),--seed $(FUZZ_SEED))

# The soak: 20,000 simulated devices register in a storm and keep alive (every 5 s) for ten
# minutes while an upper queries, subscribes and holds 50 live sessions (about 15 minutes in
# all). SOAK_ARGS changes the run (`SOAK_ARGS=--short`: 2,000 devices, 2 minutes). JSON on
# stdout, the plot in bench/out/soak.png, exit 1 when a check fails.
SOAK_ARGS ?=
soak: install
	$(BIN)/python bench/soak.py $(SOAK_ARGS)

# The overload bench (a storm at 3x the sustainable rate, with and without shedding), a short
# soak, the fault tests and a minute of fuzzing, with one summary (bench/out/reliability.json);
# about 25 minutes. RELIABILITY_ARGS=--quick: a 20 s storm. Exit 1 when any part did not hold.
reliability: install test-deps
	$(BIN)/python bench/reliability.py $(RELIABILITY_ARGS)

# The whole conformance suite in gateway mode against the gateway as it ships (a real process on
# its defaults: keepalive 60 s, registration 3600 s; only ports, data dir and the uplink to the
# suite's upper set) with two simulated NVRs below it. Reports in bench/out/conformance; exit 1
# unless every applicable case passes. The cases wait on the real timers: about 12 minutes.
# CONFORMANCE_ARGS passes more options (e.g. `--edition 2016`, or `-- -k A-KA` for the suite).
CONFORMANCE_ARGS ?=
conformance: install
	$(BIN)/python bench/conformance_run.py $(CONFORMANCE_ARGS)

# The container image without a registry or an engine (root): a Debian bookworm base made with
# debootstrap (kept in buildah's storage once made), then `buildah bud --isolation chroot`
# (deploy/image/build.sh) -> localhost/gb28181-gateway:latest. `docker build .` elsewhere.
image-deps:
	@missing=""; \
	command -v buildah >/dev/null 2>&1 || missing="$$missing buildah"; \
	command -v debootstrap >/dev/null 2>&1 || missing="$$missing debootstrap"; \
	if [ -n "$$missing" ]; then \
		echo "installing$$missing"; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

image: image-deps
	$(SUDO) sh deploy/image/build.sh

# Builds the image and runs the gateway from it (tests marked `image`, tests/deploy): SIP
# OPTIONS and REGISTER, /healthz, the non-root user, the store in the volume. About 15 s with
# the base and the dependency layer cached, 2-3 minutes from nothing.
test-image: install image-deps
	$(BIN)/pytest -m image tests/deploy --durations=5

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
