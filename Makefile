# make demo  -- set up .venv and train the demo (a shared teacher; students alone, diverse, kd with unlabelled images) on the embedded data
# make docs  -- set up .venv and build the manual offline into site/ (strict: a broken link or page fails)
# make test  -- set up .venv and run the test suite (in pytest-randomly's order for TEST_SEED;
#               make test TEST_SEED=random shuffles anew and prints the seed to replay)
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
TEST_SEED ?= 1

.PHONY: demo test docs venv clean

venv: $(STAMP)

# (Re)create or refresh the environment whenever the dependency files change.
$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip -c constraints.txt
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/kdstyles demo

test: $(STAMP)
	@seed=$(if $(filter random,$(TEST_SEED)),$$($(BIN)/python -c 'import random; print(random.randrange(10**6))'),$(TEST_SEED)); \
	echo "test order: pytest-randomly seed $$seed (make test TEST_SEED=$$seed replays it)"; \
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q --randomly-seed=$$seed

docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site
	@echo "manual: site/index.html (opens offline)"

clean:
	rm -rf $(VENV) runs site
