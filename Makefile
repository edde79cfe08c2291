# The harness's two everyday commands: `make bench` (set up, then run the main job) and `make test`.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
SUITE ?= suites/table1.yaml
ARGS ?=

.PHONY: setup bench test report clean ios-agent

setup: $(VENV)/.installed

# torch first: `pip install torch==2.13.0` takes the CPU wheel where one lies on disk; then the package.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip wheel setuptools
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[test,ios,aihub]'
	# pymobiledevice3 without its own requirements (the `ios` extra holds them, less asgiwebdav:
	# README 'iOS' says why); `pip check` then names asgiwebdav as missing, and only that.
	$(PY) -m pip install --quiet --no-deps pymobiledevice3==11.45.0
	touch $@

bench: setup
	$(VENV)/bin/harness run $(SUITE) $(ARGS)

# Test files run on up to 4 workers (pytest-xdist; a file's tests stay on one worker, which keeps its
# module fixtures): the conversions the tests make are single-threaded, so 2 cores run two at once.
test: setup
	$(VENV)/bin/pytest -q -n auto --maxprocesses 4 --dist loadfile $(ARGS)

report: setup
	$(VENV)/bin/harness report --format html $(ARGS)

clean:
	rm -rf results/runs results/*.db results/*.db-wal results/*.db-shm reports/*.html .pytest_cache

# The iOS agent app (device_agents/ios), built and signed on a Mac: needs Xcode, xcodegen
# (`brew install xcodegen`) and your Apple team id: `make ios-agent TEAM=ABCDE12345`.
IOS_DIR := device_agents/ios
IOS_BUILD := build/ios
TEAM ?=
ios-agent:
	@if [ "$$(uname -s)" != "Darwin" ] || ! command -v xcodebuild >/dev/null; then \
	  echo "error: make ios-agent builds the iOS agent app with Xcode on a Mac (xcodegen + xcodebuild);" \
	       "this machine has no Xcode. Build it on a Mac (device_agents/ios/README.md), then pass" \
	       "--ios-agent build/ios/HarnessAgent.ipa to harness run." >&2; exit 2; fi
	@command -v xcodegen >/dev/null || { echo "error: xcodegen is missing: brew install xcodegen" >&2; exit 2; }
	@[ -n "$(TEAM)" ] || { echo "error: give your Apple development team id: make ios-agent TEAM=ABCDE12345" \
	  "(Xcode > Settings > Accounts, or developer.apple.com > Membership)" >&2; exit 2; }
	cd $(IOS_DIR) && xcodegen generate
	cd $(IOS_DIR) && swift test
	# Debug: development signing with get-task-allow (house_arrest and DVT need it); -O: optimized Swift.
	xcodebuild -project $(IOS_DIR)/HarnessAgent.xcodeproj -scheme HarnessAgent -configuration Debug \
	  -destination 'generic/platform=iOS' -derivedDataPath $(IOS_BUILD)/derived -allowProvisioningUpdates \
	  DEVELOPMENT_TEAM=$(TEAM) CODE_SIGN_STYLE=Automatic SWIFT_OPTIMIZATION_LEVEL=-O build
	rm -rf $(IOS_BUILD)/Payload && mkdir -p $(IOS_BUILD)/Payload
	cp -R $(IOS_BUILD)/derived/Build/Products/Debug-iphoneos/HarnessAgent.app $(IOS_BUILD)/Payload/
	cd $(IOS_BUILD) && rm -f HarnessAgent.ipa && zip -qry HarnessAgent.ipa Payload
	@echo "built $(IOS_BUILD)/HarnessAgent.ipa: harness run SUITE --device ios --ios-agent $(IOS_BUILD)/HarnessAgent.ipa"
