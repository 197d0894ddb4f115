# make demo  -- install into .venv and run the main job on the built-in sprite world
# make test  -- install with dev extras, check the import layers, run the test suite
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin

.PHONY: demo test lint clean browser

# torch first, pinned: pip takes the local CPU build where there is one, and a range that
# 2.13.0 satisfies then pulls in nothing more (no GPU wheels on a CPU machine).
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

demo: $(VENV)/.installed
	$(BIN)/ringworld demo --out runs/demo

# The web page's test drives Debian's headless Chromium: installed here where it is missing (as root,
# or with sudo); where it cannot be, that test is skipped and says why.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo -n)
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	{ command -v apt-get >/dev/null && $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium chromium-driver >/dev/null; } || \
	echo "note: could not install chromium: the web page's test will be skipped"

test: $(VENV)/.installed browser
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q

lint: $(VENV)/.installed
	$(BIN)/ruff check .

clean:
	rm -rf runs .pytest_cache .ruff_cache .hypothesis
