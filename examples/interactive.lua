-- interactive.lua: answer a program's prompts through a pseudo-terminal.
--
-- The program here is a small shell script that behaves like an installer: it
-- refuses to run without a terminal, asks for a name and a confirmation, and
-- only then does its work. cmd:pty() gives it a terminal; expect waits for
-- each prompt (a Lua pattern), write types the answer. A prompt that never
-- comes ends in ErrTimeout with the output seen so far, instead of a hang.
--
--   lua5.4 examples/interactive.lua
local exec = require "tether.exec"
local errors = require "tether.errors"

local INSTALLER = [[
  test -t 0 || { echo "installer: stdin is not a terminal" >&2; exit 2; }
  printf 'Your name? '; read name
  printf 'Install for %s? [y/N] ' "$name"; read yes
  [ "$yes" = y ] || { echo "cancelled"; exit 1; }
  echo "installed for $name"
]]

local cmd = exec.command("sh", "-c", INSTALLER)
cmd.timeout = 10 -- bounds the whole session: every expect below included
local term = assert(cmd:pty { rows = 24, cols = 80 })
assert(cmd:start())

-- The first prompt: expect returns the match (or the pattern's captures).
local seen = assert(term:expect("Your name%? ", 5))
print(("prompt %q: answering Ada"):format(seen))
assert(term:write("Ada\n"))

-- Waiting for a prompt that is not coming ends in ErrTimeout, with the output
-- seen so far in err.output; that output stays unread for the next expect.
local _, err = term:expect("Continue%?", 0.2)
local shown = err.output:gsub("\r", "\\r"):gsub("\n", "\\n")
print(("no %q prompt -> ErrTimeout: %s; seen so far: %s"):format("Continue?",
  tostring(errors.is(err, errors.ErrTimeout)), shown))

local who = assert(term:expect("Install for (%a+)%? %[y/N%] ", 5))
print(("confirmation prompt for %s: answering y"):format(who))
assert(term:write("y\n"))

print("installer says: installed for " .. assert(term:expect("installed for (%a+)", 5)))
assert(cmd:wait())
print("exit status: " .. tostring(cmd.process_state))

-- Once the program is gone, its end of output ends an expect at once.
_, err = term:expect("anything more", 5)
print("after the exit, expect -> end of output: " .. tostring(err.eof == true))
term:close()
