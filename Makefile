# The two commands of the README, each installing what is missing first.
.PHONY: deps demo test build bench

deps:
	bash scripts/setup.sh

build: deps
	cargo build --release

# The main job: propagate the demo clip's first-frame mask through the clip with the shipped model.
demo: build
	./target/release/vprompt run pipelines/propagate.yaml
	@echo "outputs in out/demo/ (masks/, overlay.mp4, results.jsonl, coco.json, report.json)"

# Every test: unit tests, integration tests on real data, and the Python cross-checks they call.
test: deps
	PYTHONPATH=$(CURDIR)/.deps/python cargo test
