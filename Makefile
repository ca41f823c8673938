# The two set-up commands of the README: `make demo` and `make test`. Both install what is missing
# on a Debian machine (root or sudo), make .venv and install omicsfs into it.

VENV := .venv
PYTHON := $(VENV)/bin/python
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# fuse3: fusermount3 and the kernel interface; libfuse3-dev + pkg-config + gcc + python3-dev: to
# build pyfuse3; samtools, tabix: the tools the tests run through the mount; attr: getfattr;
# systemd: systemd-analyze, which the tests run over the unit files; rsync: `rsync --inplace` into
# the mount (the write tests); util-linux-extra: fincore, which tells a test what is in the page cache.
APT_PACKAGES := fuse3 libfuse3-dev pkg-config gcc python3-dev python3-venv samtools tabix attr curl systemd rsync util-linux-extra

.PHONY: demo test bench mutation deps venv clean

demo: deps venv
	$(VENV)/bin/omicsfs demo ./mnt

test: deps venv
	$(PYTHON) -m pytest -q -p no:cacheprovider

# bench/ (see bench/README.md): nginx serves the store, rclone mount is a yardstick, strace
# measures what samtools reads. `make bench BENCH_ARGS=--quick` for a smoke run.
bench: APT_PACKAGES += nginx rclone strace
bench: deps venv
	$(PYTHON) bench/bench_read.py $(BENCH_ARGS)

# Not part of `make test` or CI: about 50 minutes on two cores. Breaks one line of a core module at
# a time and counts the breaks no test notices (tests/mutation/run.py; report in build/mutation/).
# One module: `make mutation MODULES=naming`; the last run's survivors only, after adding tests: `make mutation AGAIN=1`.
mutation: deps venv
	$(VENV)/bin/python -m pip install -q -e '.[test,mutation]'
	AGAIN=$(AGAIN) $(PYTHON) tests/mutation/run.py $(MODULES)

deps:
	@missing=""; for package in $(APT_PACKAGES); do \
		dpkg-query -W -f='$${Status}' $$package 2>/dev/null | grep -q "ok installed" || missing="$$missing $$package"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		$(SUDO) apt-get update -q && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	fi
	@[ -e /dev/fuse ] || { echo "no /dev/fuse: FUSE is not available on this machine" >&2; exit 1; }

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PYTHON) -m pip install -q -e '.[test]'
	touch $@

clean:
	rm -rf $(VENV) build src/*.egg-info
