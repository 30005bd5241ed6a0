# Set-up and entry points. `make run` and `make test` create .venv and install
# what they need on a fresh machine (Python 3.11 + make), then run.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1

.PHONY: run test docs lint install clean gpu-check mutation repro-linear repro-lenet300 repro-lenet5-cpu repro-lenet5-subset repro-lenet5 robust-lenet300 robust-lenet5 verify-lenet300 verify-lenet5 repro-fashion repro-lenet5-aa

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH_PINS)
	$(BIN)/pip install -q -e '.[dev,ray,mlflow,docs]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/sparserobust run

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy src
	$(BIN)/mkdocs build --strict -q -d site
	$(BIN)/pytest -q --durations=15

# The API reference site (mkdocs.yml: docs/*.md plus the docstrings), served locally
docs: $(STAMP)
	$(BIN)/mkdocs serve

# The paper reproduction (docs/reproduction.md): one command per study. Each runs the
# study on real MNIST (DATA, default ../shared/data) with JOBS workers (resuming if
# interrupted), then regenerates the tables and plots under docs/results/.
DATA ?= ../shared/data
JOBS ?= 2
TABLES := $(BIN)/python scripts/reproduction_tables.py
STUDY = $(BIN)/sparserobust run configs/$(1).yaml --data-dir $(DATA) --out runs/$(1) -j $(JOBS) --no-progress
# $(call REPORTED_STUDY,config,results dir,plots): the study, its tables and plots under
# docs/results/<results dir>, and its report under runs/<config>/report/
define REPORTED_STUDY
	$(call STUDY,$(1))
	$(TABLES) runs/$(1) docs/results/$(2) $(3)
	$(BIN)/sparserobust report runs/$(1)
endef

repro-linear: $(STAMP)
	$(call STUDY,mnist_linear)
	$(TABLES) runs/mnist_linear docs/results/linear \
	  --plot "deepfool_linf median_norm" --plot "ddn_l2 median_norm" \
	  --plot "bound_linf margin median (not robustness)" \
	  --metric "fgsm_linf robust_acc@0.05" --metric "pgd_linf robust_acc@0.05" \
	  --metric "pgd_linf robust_acc@0.1" --metric "square_linf robust_acc@0.05" \
	  --metric "square_linf+gradient robust_acc@0.05" --metric "deepfool_linf median_norm" \
	  --metric "bound_linf ratio median" --metric "ddn_l2 median_norm" \
	  --metric "bound_l2 ratio median"

repro-lenet300: $(STAMP)
	$(call STUDY,mnist_lenet300)
	$(TABLES) runs/mnist_lenet300 docs/results/lenet300_aa \
	  --plot "autoattack_linf robust_acc@0.1" --plot "pgd_linf robust_acc@0.1" \
	  --plot "ddn_l2 median_norm" --plot "active_relu_fraction (not robustness)" \
	  --plot "bound_linf ratio median"

repro-lenet5-cpu: $(STAMP)
	$(call STUDY,mnist_lenet5_cpu)
	$(call STUDY,mnist_lenet5_cpu_s12)
	$(TABLES) runs/mnist_lenet5_cpu runs/mnist_lenet5_cpu_s12 docs/results/lenet5_cpu \
	  --plot "pgd_linf robust_acc@0.1" --plot "ddn_l2 median_norm" \
	  --plot "active_relu_fraction (not robustness)"

repro-lenet5-subset: $(STAMP)
	$(call STUDY,mnist_lenet5_subset)
	$(TABLES) runs/mnist_lenet5_subset docs/results/lenet5_subset \
	  --plot "pgd_linf robust_acc@0.1" --plot "cw_l2 median_norm" --plot "clever_linf median"

repro-lenet5: $(STAMP)
	$(call STUDY,mnist_lenet5)
	$(TABLES) runs/mnist_lenet5 docs/results/lenet5 \
	  --plot "pgd_linf robust_acc@0.1" --plot "ddn_l2 median_norm"

# Does the answer generalise (docs/reproduction.md, issue 29): Fashion-MNIST LeNet-300-100
# and LeNet-5 on MNIST under AutoAttack, 3 seeds each, with a dense control front; tables
# and plots under docs/results/, the report (with the front section) under runs/<config>/.
repro-fashion: $(STAMP)
	$(call REPORTED_STUDY,fashion_lenet300,fashion_lenet300,--plot "autoattack_linf robust_acc@0.05" \
	  --plot "autoattack_linf robust_acc@0.02" --plot "ddn_l2 median_norm" \
	  --plot "verify_linf exact robust_acc@0.02")

repro-lenet5-aa: $(STAMP)
	$(call REPORTED_STUDY,mnist_lenet5_aa,lenet5_aa,--plot "autoattack_linf robust_acc@0.1" \
	  --plot "pgd_linf robust_acc@0.1" --plot "ddn_l2 median_norm")

# Sparse and robust (docs/robust-pruning.md): the adversarial-training studies, then
# their tables and plots under docs/results/ and the report (which ranks the methods at
# each sparsity) under runs/<study>/report/.
ROBUST_PLOTS = --plot "autoattack_linf robust_acc@0.1" --plot "autoattack_linf robust_acc@0.2" \
	  --plot "ddn_l2 median_norm"

robust-lenet300: $(STAMP)
	$(call REPORTED_STUDY,mnist_lenet300_at,lenet300_at,$(ROBUST_PLOTS))

robust-lenet5: $(STAMP)
	$(call REPORTED_STUDY,mnist_lenet5_at,lenet5_at,$(ROBUST_PLOTS))

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy src

clean:
	rm -rf $(VENV) runs site .pytest_cache .ruff_cache .mypy_cache

# On a machine with a GPU (the device tool): attacks, measurements, the quick study,
# alpha-CROWN and branch and bound on CUDA against CPU, and LeNet-5 measurement timings;
# writes runs/gpu-check.json.
gpu-check: $(STAMP)
	$(BIN)/python benchmarks/gpu_check.py --device cuda --data-dir $(DATA) --json-out runs/gpu-check.json

# Mutation testing (docs/testing.md), by hand only: not part of `make test` or CI. One
# worker; 13 minutes on 2 shared cores. Config: [tool.mutmut] in pyproject.toml and
# mutation/run.py; results in mutants/ (ignored by git), counts in mutants/summary.json.
MUTATION_ARGS ?=
mutation: $(STAMP)
	rm -rf mutants
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(BIN)/python mutation/run.py $(MUTATION_ARGS)

# Certified <= exact <= attacked per sparsity (docs/verification.md): the study, its
# tables (MILP solve time and timeout rate, distance of each attack and CLEVER from the
# exact answer) and plots under docs/results/lenet300_verify/, and the report.
VERIFY_PLOTS = --plot "verify_linf exact robust_acc@0.02" --plot "verify_linf exact robust_acc@0.05" \
	  --plot "verify_linf exact robust_acc@0.1" --plot "verify_linf certified_acc crown@0.05"

verify-lenet300: $(STAMP)
	$(call REPORTED_STUDY,mnist_lenet300_verify,lenet300_verify,$(VERIFY_PLOTS))

# The same on LeNet-5, one seed, at the levels where exact verification fits.
verify-lenet5: $(STAMP)
	$(call REPORTED_STUDY,mnist_lenet5_verify,lenet5_verify,$(VERIFY_PLOTS))
