# Quick start:  make demo   (synthetic data -> vocabulary -> stage 1 -> stage 2 -> evaluation -> figure -> search index)
#               make serve  (after make demo: the search page over the demo's gallery, http://127.0.0.1:8000/)
#               make serve-eval  (after make demo: the evaluation browser of the demo's evaluation)
#               make test   (the test suite; what CI runs, after make lint)
#               make test-fast  (the suite without the tests marked slow: well under a minute)
#               make lint   (ruff, configured in pyproject.toml)
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
DEMO   := demo
# demo settings: small resnet18 at 64 px, random init, so it runs in minutes on 2 CPU cores
DEMO_FLAGS := --dataset fashioniq --data_root $(DEMO)/data --vocab_dir $(DEMO)/vocab --output_dir $(DEMO)/runs \
	--exp_name quickstart --backbone resnet18 --backbone_weights none --crop_size 64 --batch_size 32 \
	--num_workers 2 --device cpu

.PHONY: demo serve serve-eval test test-fast lint venv clean-demo bench

venv: $(VENV)/.installed
$(VENV)/.installed: requirements.txt requirements-dev.txt requirements-clip.txt requirements-web.txt
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt -r requirements-dev.txt -r requirements-clip.txt -r requirements-web.txt
	touch $@

demo: venv
	$(PY) -m data.synthetic --out $(DEMO)/data --dataset fashioniq --size 64 --seed 0
	$(PY) vocab.py --dataset fashioniq --data_root $(DEMO)/data --vocab_dir $(DEMO)/vocab
	$(PY) train.py $(DEMO_FLAGS) --two_stage --num_epochs 4 --step_lr 2 --finetune_epochs 2 --finetune_step_lr 1 --overwrite
	$(PY) evaluate.py --ckpt $(DEMO)/runs/quickstart/stage2/best.pt --data_root $(DEMO)/data --device cpu
	$(PY) visualize.py retrievals --ckpt $(DEMO)/runs/quickstart/stage2/best.pt --data_root $(DEMO)/data \
		--device cpu --n 4 --k 8 --out $(DEMO)/retrievals.png
	$(PY) retrieve.py index --ckpt $(DEMO)/runs/quickstart/stage2/best.pt --images $(DEMO)/data/fashionIQ/img \
		--out $(DEMO)/gallery.index --device cpu

# the pages bind 127.0.0.1 (this machine only); HOST=0.0.0.0 exposes them, without login, to the network
HOST ?= 127.0.0.1
PORT ?= 8000
serve: venv
	$(PY) serve.py search --index $(DEMO)/gallery.index --device cpu --host $(HOST) --port $(PORT)

serve-eval: venv
	$(PY) serve.py eval --run $(DEMO)/runs/quickstart/stage2/eval_val --data_root $(DEMO)/data --device cpu \
		--host $(HOST) --port $(PORT)

test: venv
	$(PY) -m pytest -q tests

test-fast: venv
	$(PY) -m pytest -q -m "not slow" tests

lint: venv
	$(PY) -m ruff check .

bench: venv
	$(PY) benchmarks/bench_scoring.py
	$(PY) benchmarks/bench_eval.py

clean-demo:
	rm -rf $(DEMO)
