-- tether-scm-1.rockspec: the development version of tether.
--
-- Install from a checkout (run from the repository root, where src/ and
-- lua/ are):
--   luarocks make rockspec/tether-scm-1.rockspec
--   luarocks --lua-version=5.4 make rockspec/tether-scm-1.rockspec --tree DIR
--
-- Every C file in src/ is listed below: keep the list in step with src/
-- (spec/install_spec.lua checks that it is).
rockspec_format = "3.0"
package = "tether"
version = "scm-1"

source = {
   url = "git+https://example.invalid/tether.git",
}

description = {
   summary = "Go's os/exec, os/signal and context for Lua, with a C core",
   detailed = [[
tether brings Go's process model to Lua: run commands and capture their
output (tether.exec), with error objects that say what failed
(tether.errors), a locked process environment (tether.env), and signal
handling, contexts, bounded file-I/O lanes and pinned worker pools to
come. The C core spawns with clone(CLONE_VM|CLONE_VFORK), backs every
child with a pidfd, never blocks, and never steals the host's children or
signal handlers. Lua 5.4 first; Lua 5.1, 5.3 and LuaJIT as well; Linux.
]],
   license = "MIT",
   homepage = "https://example.invalid/tether",
   issues_url = "https://example.invalid/tether/issues",
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
            "src/children.c",
            "src/copy.c",
            "src/core.c",
            "src/cpus.c",
            "src/env.c",
            "src/fd.c",
            "src/fdkind.c",
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
            "src/reaper.c",
            "src/relay.c",
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
      ["tether.wait"] = "lua/tether/wait.lua",
   },
   install = {
      bin = {
         ["tether-init"] = "bin/tether-init",
      },
   },
}
