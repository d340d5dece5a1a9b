# tether - build, test, demo, install.   make LUA=5.4|5.3|5.1|luajit
LUA ?= 5.4

ifeq ($(LUA),luajit)
  LUA_BIN ?= luajit
  LUA_PC  ?= luajit
  # OpenResty's LuaJIT branch: Debian's nginx Lua module needs it, and it conflicts with luajit.
  LUA_PKGS ?= luajit2 libluajit2-5.1-dev
else ifeq ($(LUA),5.1)
  LUA_BIN ?= lua5.1
  LUA_PC  ?= lua5.1
  LUA_PKGS ?= lua5.1 liblua5.1-0-dev
else
  LUA_BIN ?= lua$(LUA)
  LUA_PC  ?= lua$(LUA)
  LUA_PKGS ?= lua$(LUA) liblua$(LUA)-dev
endif

BUILD   := build/$(LUA)
CORE    := $(BUILD)/tether/core.so
SRCS    := $(wildcard src/*.c)
OBJS    := $(patsubst src/%.c,$(BUILD)/obj/%.o,$(SRCS))
HDRS    := $(wildcard src/*.h)

CC      ?= cc
CFLAGS  ?= -O2 -g
CFLAGS  += -std=gnu11 -fPIC -Wall -Wextra -Wno-unused-parameter -fvisibility=hidden
LUA_CFLAGS = $(shell pkg-config --cflags $(LUA_PC) 2>/dev/null)
LDFLAGS += -shared -pthread

# What make test and make demo need, from Debian's packages.
DEB_PKGS := $(LUA_PKGS) lua-busted pkg-config gcc make luarocks lua-cqueues lua-socket lua-filesystem lua-posix \
  nginx libnginx-mod-http-lua curl lua-check cppcheck tini valgrind \
  lua5.1 liblua5.1-0-dev zip unzip \
  python3 # spec/pty_spec.lua drives python3 prompts under a pty

export LUA_PATH  := $(CURDIR)/lua/?.lua;$(CURDIR)/lua/?/init.lua;$(CURDIR)/spec/?.lua;;
export LUA_CPATH := $(CURDIR)/$(BUILD)/?.so;;
export TETHER_LUA := $(LUA_BIN)
export TETHER_SIGEXEC := $(CURDIR)/$(BUILD)/sigexec
export TETHER_HOSTHANDLER := $(CURDIR)/$(BUILD)/spec/hosthandler.so
export TETHER_SEMTHREAD := $(CURDIR)/$(BUILD)/spec/semthread.so
export TETHER_EMBEDHOST := $(CURDIR)/$(BUILD)/spec/embedhost
export TETHER_REAPHOST := $(CURDIR)/$(BUILD)/spec/reaphost.so
export TETHER_FORKTHREAD := $(CURDIR)/$(BUILD)/spec/forkthread.so

.PHONY: all deps test test-all demo clean install

all: $(CORE)

$(BUILD)/obj/%.o: src/%.c $(HDRS) | deps
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LUA_CFLAGS) -c $< -o $@

$(CORE): $(OBJS)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $(OBJS)

# Install what is missing when run as root (a fresh Debian machine; apt-get is tried twice, a
# mirror can fail once); otherwise say what is missing.
# A temporary policy-rc.d keeps apt from starting services (the nginx package would
# otherwise start a server on port 80); the specs start their own nginx on loopback.
deps:
	@missing=""; for p in $(DEB_PKGS); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing:$$missing"; \
	    policy=""; if [ ! -e /usr/sbin/policy-rc.d ]; then \
	      printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d && policy=1; \
	    fi; \
	    for try in 1 2; do \
	      (apt-get -o DPkg::Lock::Timeout=300 update -qq && DEBIAN_FRONTEND=noninteractive \
	        apt-get -o DPkg::Lock::Timeout=300 install -y -qq $$missing) >/dev/null; arc=$$?; \
	      [ $$arc = 0 ] && break; echo "apt-get failed (status $$arc), try $$try of 2"; sleep 5; \
	    done; \
	    if [ -n "$$policy" ]; then rm -f /usr/sbin/policy-rc.d; fi; \
	    [ $$arc = 0 ] || exit 1; \
	  else echo "missing Debian packages:$$missing (run as root or install them)"; exit 1; fi; \
	fi

# A spec helper: runs a command with signals blocked/ignored (spec/helpers/sigexec.c).
$(BUILD)/sigexec: spec/helpers/sigexec.c
	@mkdir -p $(dir $@)
	$(CC) -O2 -Wall -o $@ $<

# A spec helper: a Lua C module installing a counting signal handler, standing for a host
# program's own handler (spec/helpers/hosthandler.c).
$(BUILD)/spec/hosthandler.so: spec/helpers/hosthandler.c | deps
	@mkdir -p $(dir $@)
	$(CC) -O2 -Wall -fPIC -shared $(LUA_CFLAGS) -o $@ $<

# A spec helper: runs Lua code in another lua_State on another thread with a semaphore shared
# through tether_sem_push (spec/helpers/semthread.c, built with src/sync.c and src/util.c).
$(BUILD)/spec/semthread.so: spec/helpers/semthread.c src/sync.c src/util.c $(HDRS) | deps
	@mkdir -p $(dir $@)
	$(CC) -O2 -g -Wall -fPIC -shared -pthread $(LUA_CFLAGS) -o $@ spec/helpers/semthread.c src/sync.c src/util.c

# A spec helper: a C program embedding Lua that opens, runs and closes lua_States and handles
# signals itself (spec/helpers/embedhost.c). Built with CFLAGS, so the ASan build has ASan.
$(BUILD)/spec/embedhost: spec/helpers/embedhost.c | deps
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LUA_CFLAGS) -o $@ $< $(filter-out -shared,$(LDFLAGS)) $(shell pkg-config --libs $(LUA_PC)) -ldl -lm

# A spec helper: a Lua C module standing for a host that reaps every child (a thread looping
# waitpid(-1, WNOHANG); SIGCHLD ignored) (spec/helpers/reaphost.c).
$(BUILD)/spec/reaphost.so: spec/helpers/reaphost.c | deps
	@mkdir -p $(dir $@)
	$(CC) -O2 -g -Wall -fPIC -shared -pthread $(LUA_CFLAGS) -o $@ $<

# A spec helper: a host thread that forks while the Lua thread uses tether; each child runs
# Lua code in a fresh lua_State (spec/helpers/forkthread.c).
$(BUILD)/spec/forkthread.so: spec/helpers/forkthread.c | deps
	@mkdir -p $(dir $@)
	$(CC) -O2 -g -Wall -fPIC -shared -pthread $(LUA_CFLAGS) -o $@ $<

# SPECS=spec/exec_spec.lua runs one spec file (or several) instead of the whole suite.
SPECS ?= spec
SPEC_HELPERS := $(BUILD)/sigexec $(BUILD)/spec/hosthandler.so $(BUILD)/spec/semthread.so \
  $(BUILD)/spec/embedhost $(BUILD)/spec/reaphost.so $(BUILD)/spec/forkthread.so

test: $(CORE) $(SPEC_HELPERS)
	@mkdir -p $(BUILD)
	@tap=$(BUILD)/test.$$$$.tap; \
	  $(LUA_BIN) /usr/bin/busted -o TAP $(SPECS) > $$tap 2>$$tap.err; rc=$$?; \
	  cat $$tap; cat $$tap.err >&2; \
	  $(LUA_BIN) scripts/tap-summary.lua $$tap $$rc; src=$$?; \
	  mv -f $$tap $(BUILD)/test.tap; rm -f $$tap.err; exit $$src

# The suite on every Lua tether supports; fails when any fails.
test-all:
	@rc=0; for v in 5.4 5.3 5.1 luajit; do \
	  echo "== Lua $$v"; $(MAKE) --no-print-directory test LUA=$$v || rc=1; \
	done; exit $$rc

demo: $(CORE)
	$(LUA_BIN) examples/tour.lua

# make lint: luacheck (.luacheckrc) on the Lua code, cppcheck on the C core.
.PHONY: lint doc-coverage
lint:
	@command -v luacheck >/dev/null || { echo "luacheck is missing (Debian: lua-check)"; exit 1; }
	@command -v cppcheck >/dev/null || { echo "cppcheck is missing (Debian: cppcheck)"; exit 1; }
	@rc=0; luacheck -q --no-color lua spec examples scripts bin/tether-init || rc=1; \
	  cppcheck -q --force --std=c11 --enable=warning,performance,portability --error-exitcode=1 \
	    --inline-suppr --config-exclude=/usr/include $(LUA_CFLAGS) -I src src || rc=1; \
	  if [ $$rc = 0 ]; then echo "lint: luacheck and cppcheck clean"; fi; exit $$rc

# make doc-coverage: fails when a public function (lua/tether/*.lua, or registered by
# the C core) has no reference in docs/ (scripts/doc-coverage.lua).
doc-coverage:
	@$(LUA_BIN) scripts/doc-coverage.lua

# make install [PREFIX=/usr/local] [DESTDIR=]: tether.core and the Lua modules
# where this Lua's default package.path and package.cpath look, and bin/tether-init in
# $(PREFIX)/bin with its sh preamble naming this Lua's interpreter (e.g. /usr/bin/lua5.4).
PREFIX ?= /usr/local
LUA_ABI := $(if $(filter luajit,$(LUA)),5.1,$(LUA))
INSTALL_LMOD ?= $(PREFIX)/share/lua/$(LUA_ABI)
INSTALL_CMOD ?= $(PREFIX)/lib/lua/$(LUA_ABI)

install: $(CORE)
	install -d $(DESTDIR)$(INSTALL_CMOD)/tether $(DESTDIR)$(INSTALL_LMOD)/tether
	install -m 755 $(CORE) $(DESTDIR)$(INSTALL_CMOD)/tether/core.so
	cd lua && find tether -name '*.lua' -exec install -D -m 644 {} $(DESTDIR)$(INSTALL_LMOD)/{} \;
	install -d $(DESTDIR)$(PREFIX)/bin
	sed 's|^lua=lua #|lua=$(shell command -v $(LUA_BIN) || echo $(LUA_BIN)) #|' bin/tether-init > $(DESTDIR)$(PREFIX)/bin/tether-init
	chmod 755 $(DESTDIR)$(PREFIX)/bin/tether-init

# make rock [ROCK_VERSION=0.2.0-1] [ROCK_DIR=build/rock]: packs rockspec/tether-$(ROCK_VERSION).rockspec
# and the checkout into $(ROCK_DIR)/tether-$(ROCK_VERSION).src.rock (scripts/make-rock.sh), which
# `luarocks --lua-version=5.4 install FILE` builds and installs offline (RELEASING.md).
ROCK_VERSION ?= 0.2.0-1
ROCK_DIR ?= build/rock
.PHONY: rock
rock:
	@sh scripts/make-rock.sh $(ROCK_VERSION) $(ROCK_DIR)

clean:
	rm -rf build

# make check-asan: the spec suite against a tether.core built with ASan+UBSan into
# build/$(LUA)-asan (a recursive make reusing the rules above). libasan is preloaded into the
# interpreters only: busted and the Lua helper children run through spec/helpers/asan-lua
# (as $$TETHER_LUA), and spec/helpers/asan.lua drops LD_PRELOAD for every other program.
# ASan installs no SEGV/BUS/FPE handlers (the specs check the dispositions children start
# with; a crash still fails). Leaks: LSan is on (detect_leaks=1); spec/helpers/lsan.supp
# would list known leaks outside tether (none needed so far). Every ASan/LSan/UBSan error,
# from any process, lands in $(ASAN_BUILD)/report.<pid> and is shown; ASan and UBSan errors
# fail the target, and so do leaks with a frame in tether (a Lua child passes LD_PRELOAD on to
# the programs it runs, such as sort, whose own leaks are only shown); warnings do not fail.
ASAN_BUILD   := build/$(LUA)-asan
# ASAN_SPECS="spec/a_spec.lua ..." runs some spec files only (default: all of spec/).
ASAN_SPECS   ?= spec
ASAN_FLAGS   := -fsanitize=address,undefined -fno-omit-frame-pointer
ASAN_ENV      = LUA_CPATH='$(CURDIR)/$(ASAN_BUILD)/?.so;;' \
  TETHER_SIGEXEC=$(CURDIR)/$(ASAN_BUILD)/sigexec \
  TETHER_HOSTHANDLER=$(CURDIR)/$(ASAN_BUILD)/spec/hosthandler.so \
  TETHER_SEMTHREAD=$(CURDIR)/$(ASAN_BUILD)/spec/semthread.so \
  TETHER_EMBEDHOST=$(CURDIR)/$(ASAN_BUILD)/spec/embedhost \
  TETHER_REAPHOST=$(CURDIR)/$(ASAN_BUILD)/spec/reaphost.so \
  TETHER_FORKTHREAD=$(CURDIR)/$(ASAN_BUILD)/spec/forkthread.so \
  TETHER_LUA=$(CURDIR)/spec/helpers/asan-lua TETHER_ASAN_LUA=$(LUA_BIN) \
  TETHER_ASAN_LIB=$$(gcc -print-file-name=libasan.so) \
  ASAN_OPTIONS=detect_leaks=1:handle_segv=0:handle_sigbus=0:handle_sigfpe=0:log_path=$(CURDIR)/$(ASAN_BUILD)/report \
  LSAN_OPTIONS=suppressions=$(CURDIR)/spec/helpers/lsan.supp:print_suppressions=0 \
  UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1:log_path=$(CURDIR)/$(ASAN_BUILD)/report

.PHONY: check-asan check-valgrind
check-asan:
	@CFLAGS="-O1 -g $(ASAN_FLAGS)" LDFLAGS="$(ASAN_FLAGS)" $(MAKE) --no-print-directory BUILD=$(ASAN_BUILD) \
	  $(ASAN_BUILD)/tether/core.so $(ASAN_BUILD)/sigexec $(ASAN_BUILD)/spec/hosthandler.so \
	  $(ASAN_BUILD)/spec/semthread.so $(ASAN_BUILD)/spec/embedhost $(ASAN_BUILD)/spec/reaphost.so \
	  $(ASAN_BUILD)/spec/forkthread.so
	@rm -f $(ASAN_BUILD)/report.*
	@$(ASAN_ENV) timeout -s KILL 1800 spec/helpers/asan-lua /usr/bin/busted --helper=spec/helpers/asan.lua -o TAP $(ASAN_SPECS) \
	    > $(ASAN_BUILD)/test.tap 2>$(ASAN_BUILD)/test.err; rc=$$?; \
	  cat $(ASAN_BUILD)/test.tap; cat $(ASAN_BUILD)/test.err >&2; \
	  for f in $(ASAN_BUILD)/report.*; do [ -f "$$f" ] || continue; echo "== sanitizer report $$f:"; cat "$$f"; \
	    if grep -q "ERROR: AddressSanitizer\|runtime error:" "$$f" || { grep -q "ERROR: LeakSanitizer" "$$f" && \
	      grep -q "tether/core\.so\|src/[a-z]*\.c:" "$$f"; }; then [ $$rc = 0 ] && rc=1; fi; done; \
	  $(LUA_BIN) scripts/tap-summary.lua $(ASAN_BUILD)/test.tap $$rc

# make check-valgrind: the spec suite in the interpreter under valgrind memcheck; a definite
# leak or an invalid access fails it (spec/helpers/valgrind.supp silences known noise outside
# tether). Children are not traced. VG_SPECS picks the spec files (default: all of spec/).
# spec/helpers/valgrind.lua pre-grows the stack (see there); TETHER_VALGRIND=1 lets specs skip
# what valgrind cannot emulate, and util.scale shortens spawn loops. Slow (each spawn forks a
# memcheck until exec): the spec files run in VG_JOBS shards in parallel
# (scripts/valgrind-shards.sh), about 6 min on 2 cores.
VG_DIR   := build/$(LUA)-valgrind
VG_SPECS ?= spec
VG_JOBS  ?= $(shell nproc)
VALGRIND ?= valgrind --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite --show-leak-kinds=definite \
  --child-silent-after-fork=yes --trace-children=no --suppressions=spec/helpers/valgrind.supp

check-valgrind: $(CORE) $(SPEC_HELPERS)
	@rm -rf $(VG_DIR); mkdir -p $(VG_DIR)
	@TETHER_VALGRIND=1 VG_SPECS="$(VG_SPECS)" timeout -s KILL 3600 \
	  sh scripts/valgrind-shards.sh $(VG_JOBS) $(VG_DIR) $(LUA_BIN) $(VALGRIND)

# make bench: tether side by side with the peers in ../shared/bench/peers (bench/README.md).
# As root, first installs the peers' optional toolchains; a peer whose toolchain is missing
# is skipped with a note. BENCH_CASES="1 3" runs some cases only; REPS=3 by default.
BENCH_PKGS := golang-go lua-luv python3 lua5.3 lua-posix strace time
.PHONY: bench
bench: $(CORE)
	@if [ "$$(id -u)" = 0 ]; then missing=""; for p in $(BENCH_PKGS); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; done; \
	  if [ -n "$$missing" ]; then echo "installing (optional peers):$$missing"; \
	    (apt-get -o DPkg::Lock::Timeout=300 update -qq && DEBIAN_FRONTEND=noninteractive \
	      apt-get -o DPkg::Lock::Timeout=300 install -y -qq $$missing) >/dev/null 2>&1 || \
	      echo "could not install:$$missing (those peers are skipped)"; fi; fi
	@LUA_BIN=$(LUA_BIN) bash bench/run.sh $(BENCH_CASES)

# make fuzz [FUZZ_TIME=60]: every fuzz/<name>_fuzz.c, built with libFuzzer and ASan+UBSan
# (Debian's clang), linked with the core's sources, runs FUZZ_TIME seconds on the corpus
# in fuzz/corpus/<name>/ (read only: new inputs go to build/fuzz/corpus-<name>/). A crash,
# a sanitizer finding or a broken rule (the target aborts) fails it, also when it happened
# in a spawn's child, which dies alone and leaves the fuzzer running (its report is in the
# log); the reproducer is left in build/fuzz/. Lua 5.4 only.
FUZZ_TIME ?= 60
FUZZ_PKGS := clang libclang-rt-14-dev liblua5.4-dev
FUZZ_TARGETS := $(patsubst fuzz/%_fuzz.c,%,$(wildcard fuzz/*_fuzz.c))
FUZZ_CFLAGS := -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
  -DTETHER_ROOT='"$(CURDIR)"' -Isrc $$(pkg-config --cflags lua5.4)

.PHONY: fuzz fuzz-build
fuzz-build:
	@$(MAKE) --no-print-directory deps DEB_PKGS="$(FUZZ_PKGS)"
	@mkdir -p build/fuzz
	@for t in $(FUZZ_TARGETS); do \
	  clang $(FUZZ_CFLAGS) -o build/fuzz/$$t fuzz/$${t}_fuzz.c $(SRCS) $$(pkg-config --libs lua5.4) -pthread \
	    || exit 1; \
	done

fuzz: fuzz-build
	@rc=0; rm -f build/fuzz/crash-* build/fuzz/timeout-* build/fuzz/oom-* build/fuzz/leak-*; \
	for t in $(FUZZ_TARGETS); do \
	  mkdir -p build/fuzz/corpus-$$t fuzz/corpus/$$t; \
	  echo "== fuzz $$t for $(FUZZ_TIME)s"; \
	  (cd build/fuzz && ASAN_OPTIONS=detect_leaks=1 ./$$t -max_total_time=$(FUZZ_TIME) -max_len=2048 \
	    -timeout=20 -print_funcs=0 -print_final_stats=1 corpus-$$t ../../fuzz/corpus/$$t > $$t.log 2>&1); trc=$$?; \
	  tail -n 20 build/fuzz/$$t.log; \
	  found="runtime error:\|ERROR: AddressSanitizer\|Test unit written to"; \
	  if [ $$trc = 0 ] && grep -q "$$found" build/fuzz/$$t.log; then \
	    trc=1; grep -m 3 "$$found" build/fuzz/$$t.log; fi; \
	  if [ $$trc != 0 ]; then echo "fuzz $$t FAILED (status $$trc)"; rc=1; fi; \
	done; exit $$rc
