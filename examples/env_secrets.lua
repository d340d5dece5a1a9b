-- env_secrets.lua: give a secret to one child without leaking it into logs or other children.
--
-- env.secret wraps the value: tostring and concatenation give "<redacted>", so a log line
-- that mentions it by mistake leaks nothing. env.environ{redact=true} dumps the
-- environment with secret-looking values hidden. The secret is then removed from our own
-- environment, so commands we run do not inherit it, and handed to exactly one child
-- through cmd.env. tether's error messages about env entries never echo a value.
--
--   DEMO_API_TOKEN=my-token lua5.4 examples/env_secrets.lua
--   lua5.4 examples/env_secrets.lua        (makes up a token for the demo)
local tether = require "tether"
local env = require "tether.env"
local exec = require "tether.exec"

local function say(fmt, ...)
  io.stdout:write((fmt .. "\n"):format(...))
  io.stdout:flush()
end

tether.main(function()
  if not env.get("DEMO_API_TOKEN") then -- normally set by the service manager or a vault agent
    math.randomseed(os.time() + tether.pid())
    env.set("DEMO_API_TOKEN", ("demo-%08x%08x"):format(math.random(0, 0x7fffffff), math.random(0, 0x7fffffff)))
  end
  local token = env.secret("DEMO_API_TOKEN")

  -- Mentioned by mistake in a log line: redacted.
  say("token: %s", tostring(token))
  say("log: calling the API with token " .. token)

  -- A diagnostic dump of the environment: secret-looking names are redacted.
  for _, kv in ipairs(env.environ { redact = true }) do
    if kv:match("^DEMO_") then say("env: %s", kv) end
  end

  -- Out of our environment: nothing we run inherits it by accident.
  env.unset("DEMO_API_TOKEN")

  -- Exactly one child gets it, under the name it expects, through cmd.env.
  local child = exec.command("sh", "-c", 'printf "child: got a token of %d characters\\n" "${#API_TOKEN}"')
  child.env = { API_TOKEN = token:reveal(), PATH = env.get("PATH", "/usr/bin:/bin") }
  say("running: %s", tostring(child)) -- the command line, never its environment
  io.stdout:write(assert(child:output()))

  -- Another child inherits our environment: no token there.
  local other = exec.command("sh", "-c",
    'echo "other child: API_TOKEN=${API_TOKEN:-unset} DEMO_API_TOKEN=${DEMO_API_TOKEN:-unset}"')
  io.stdout:write(assert(other:output()))

  -- A malformed env entry (a forgotten "="): the error names the entry, not its value.
  local bad = exec.command("true")
  bad.env = { "API_TOKEN" .. token:reveal() }
  local ok, err = pcall(bad.run, bad)
  say("bad env -> %s", ok and "no error?" or tostring(err):gsub("^[^:]*:%d+: ", ""))

  -- A failing child: its error carries the exit status and stderr, not the environment.
  local failing = exec.command("sh", "-c", 'echo "upstream rejected the request" >&2; exit 3')
  failing.env = { API_TOKEN = token:reveal() }
  local _, ferr = failing:output()
  say("failing child -> %s", tostring(ferr)) -- the message quotes the first line of stderr
  say("done")
end)
