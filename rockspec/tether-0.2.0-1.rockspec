-- tether-0.2.0-1.rockspec: the 0.2.0 release of tether.
--
-- `make rock` packs this rockspec and the checkout into tether-0.2.0-1.src.rock,
-- which `luarocks --lua-version=5.4 install tether-0.2.0-1.src.rock` builds and
-- installs offline. source.url and source.tag name the release's repository
-- and tag; RELEASING.md says how they are set when a release is cut. The
-- module list is the same as tether-scm-1.rockspec's (spec/install_spec.lua
-- checks both against src/ and lua/tether/).
rockspec_format = "3.0"
package = "tether"
version = "0.2.0-1"

source = {
   url = "git+https://github.com/tether-lua/tether.git",
   tag = "v0.2.0",
}

description = {
   summary = "Go's os/exec, os/signal and context for Lua, with a C core",
   detailed = [[
tether brings Go's process model to Lua: run commands, feed and capture
their output, pipelines and exit statuses with rusage (tether.exec), error
objects that say what failed (tether.errors), a locked process environment
(tether.env), signal channels (tether.signal), cancellation and deadlines
(tether.context), a bounded file-I/O lane (tether.fs) and weighted
semaphores (tether.sync), pinned worker pools (tether.pool), a supervisor
with restart policies and backoff (tether.supervisor), systemd
notifications (tether.systemd), reaper mode (tether.reaper) and a PID-1
init written on the library (bin/tether-init). The C core spawns with
clone(CLONE_VM|CLONE_VFORK), backs every child with a pidfd, never blocks,
and never steals the host's children or signal handlers; the same code
blocks in poll(2) in a script or yields inside cqueues or OpenResty.
Lua 5.4 first; Lua 5.1, 5.3 and LuaJIT as well; Linux.
]],
   license = "MIT",
   homepage = "https://github.com/tether-lua/tether",
   issues_url = "https://github.com/tether-lua/tether/issues",
   labels = { "process", "exec", "subprocess", "signal", "context", "linux" },
}

supported_platforms = { "linux" }

dependencies = {
   "lua >= 5.1",
}

build = {
   type = "builtin",
   modules = {
      ["tether.core"] = {
         sources = {
            "src/bigstr.c",
            "src/buffer.c",
            "src/cgroup.c",
            "src/children.c",
            "src/copy.c",
            "src/core.c",
            "src/cpus.c",
            "src/env.c",
            "src/fd.c",
            "src/fdkind.c",
            "src/fork.c",
            "src/fsops.c",
            "src/hostflag.c",
            "src/lane.c",
            "src/pgroup.c",
            "src/pin.c",
            "src/pool.c",
            "src/poolmap.c",
            "src/pooltask.c",
            "src/poolworker.c",
            "src/process.c",
            "src/pty.c",
            "src/reaper.c",
            "src/relay.c",
            "src/rlimit.c",
            "src/signal.c",
            "src/slab.c",
            "src/sync.c",
            "src/sys.c",
            "src/systemd.c",
            "src/util.c",
         },
         libraries = { "pthread" },
         incdirs = { "src" },
      },
      ["tether"] = "lua/tether/init.lua",
      ["tether.cgroup"] = "lua/tether/cgroup.lua",
      ["tether.childopts"] = "lua/tether/childopts.lua",
      ["tether.context"] = "lua/tether/context.lua",
      ["tether.engine"] = "lua/tether/engine.lua",
      ["tether.env"] = "lua/tether/env.lua",
      ["tether.errors"] = "lua/tether/errors.lua",
      ["tether.exec"] = "lua/tether/exec.lua",
      ["tether.fs"] = "lua/tether/fs.lua",
      ["tether.host"] = "lua/tether/host.lua",
      ["tether.ngx"] = "lua/tether/ngx.lua",
      ["tether.pipe"] = "lua/tether/pipe.lua",
      ["tether.pool"] = "lua/tether/pool.lua",
      ["tether.process"] = "lua/tether/process.lua",
      ["tether.reaper"] = "lua/tether/reaper.lua",
      ["tether.signal"] = "lua/tether/signal.lua",
      ["tether.signame"] = "lua/tether/signame.lua",
      ["tether.supervisor"] = "lua/tether/supervisor.lua",
      ["tether.sync"] = "lua/tether/sync.lua",
      ["tether.systemd"] = "lua/tether/systemd.lua",
      ["tether.terminal"] = "lua/tether/terminal.lua",
      ["tether.trace"] = "lua/tether/trace.lua",
      ["tether.wait"] = "lua/tether/wait.lua",
   },
   install = {
      bin = {
         ["tether-init"] = "bin/tether-init",
      },
   },
}
