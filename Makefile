# Car-image similarity search: train -> evaluate (serving and clients: see README).
# Every target installs what it needs first; `make help` lists them.

PYTHON_SYS ?= python3
VENV       := .venv
PY         := $(VENV)/bin/python
STAMP      := $(VENV)/.installed
REQS       := requirements/train.in requirements/serve.in requirements/quaterion.txt requirements/constraints.txt

# Training defaults: the offline synthetic demo. For real cars, e.g.
#   make train DATA=../shared/data/cars196-dev BACKBONE=mobilenet_v2 \
#        WEIGHTS=../shared/weights/mobilenet_v2_imagenet.pt INPUT_SIZE=224 RUN=runs/cars
DATA       ?= data/synthetic
DATASET    ?= imagefolder
RUN        ?= runs/latest
BACKBONE   ?= $(if $(filter data/synthetic,$(DATA)),resnet18,resnet152)
WEIGHTS    ?= $(if $(filter data/synthetic,$(DATA)),none,default)
INPUT_SIZE ?= $(if $(filter data/synthetic,$(DATA)),64,224)
EPOCHS     ?= $(if $(filter data/synthetic,$(DATA)),100,50)
LR         ?= $(if $(filter data/synthetic,$(DATA)),0.03,0.003)
TRAIN_ARGS ?=
PYTEST_ARGS ?=

.PHONY: help install constraints synthetic train evaluate archive serve stop demo test lint clean

help:
	@echo "make demo       synthetic data -> train -> evaluate, offline (installs first)"
	@echo "make test       run the test suite (installs first)"
	@echo "make install    create $(VENV) with the pinned environment (idempotent)"
	@echo "make train      DATA=DIR RUN=DIR [BACKBONE= WEIGHTS= INPUT_SIZE= EPOCHS= LR= TRAIN_ARGS=]"
	@echo "make evaluate   RUN=DIR DATA=DIR: base vs tuned on the held-out classes"
	@echo "make archive    RUN=DIR: pack the run into model_store/cars.mar"
	@echo "make serve      start TorchServe on 127.0.0.1:8080-8082 and wait until the model is ready"
	@echo "make stop       stop TorchServe"
	@echo "make lint       ruff"

install: $(STAMP)

$(STAMP): $(REQS)
	@$(PYTHON_SYS) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python >= 3.11 is required")'
	@test -x $(PY) || $(PYTHON_SYS) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -c requirements/constraints.txt -r requirements/train.in -r requirements/serve.in
	@# Quaterion declares Python < 3.11; its dependencies are in train.in, so only it skips the check.
	$(PY) -m pip install -q --disable-pip-version-check --no-deps --ignore-requires-python -r requirements/quaterion.txt
	@command -v java >/dev/null 2>&1 || echo "warning: no 'java' found. Training works without it, but serving (TorchServe) needs Java 17+: apt-get install openjdk-17-jre-headless"
	@touch $@

constraints: $(STAMP)
	{ echo "# Exact versions of the whole training environment (pip freeze of a working .venv)."; \
	  echo "# Regenerate with 'make constraints' after changing requirements/train.in."; \
	  $(PY) -m pip freeze --exclude-editable | grep -v -E '^(quaterion|quaterion-models)=='; } > requirements/constraints.txt.tmp
	mv requirements/constraints.txt.tmp requirements/constraints.txt

data/synthetic: | $(STAMP)
	$(PY) -m train.synthetic --out $@ --colours 6 --shapes 4 --per-class 30

synthetic: data/synthetic

train: $(STAMP) $(if $(filter data/synthetic,$(DATA)),data/synthetic)
	$(PY) -m train.train --data $(DATA) --dataset $(DATASET) --backbone $(BACKBONE) --weights $(WEIGHTS) \
	  --input-size $(INPUT_SIZE) --epochs $(EPOCHS) --lr $(LR) --out $(RUN) --overwrite $(TRAIN_ARGS)

evaluate: $(STAMP)
	$(PY) -m train.evaluate --run $(RUN) --data $(DATA) --dataset $(DATASET) --plot

archive: $(STAMP)
	$(PY) -m serve.archive --run $(RUN) --model-store model_store

serve: $(STAMP)
	$(PY) -m serve.server start --config serve/config.properties --log-dir logs

stop: $(STAMP)
	$(PY) -m serve.server stop

demo: train
	$(MAKE) evaluate RUN=$(RUN) DATA=$(DATA) DATASET=$(DATASET)

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf runs data/synthetic .cache .pytest_cache logs model_store/*.mar
