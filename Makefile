# The two commands of the README:  `make demo`  (portrait segmentation of the bundled image)
# and `make test` (the test suite, as CI runs it). Both create .venv and install on first use.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.stamp-install
PYTEST_ARGS ?=

.PHONY: demo test install clean

install: $(STAMP)

$(STAMP): pyproject.toml requirements/torch.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements/torch.txt
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/rtseg predict assets/portrait.jpg --out out/demo

test: $(STAMP)
	sh scripts/install_browser.sh
	$(PY) -m pytest -n 2 --dist loadfile $(PYTEST_ARGS)

clean:
	rm -rf out runs .pytest_cache
