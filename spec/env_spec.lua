-- tether.env: the process environment behind one lock.
local env = require "tether.env"
local core = require "tether.core"

-- Puts back an environment saved with env.environ().
local function restore(saved)
  assert(env.clear())
  for _, kv in ipairs(saved) do
    local eq = kv:find("=", 1, true)
    if eq and eq > 1 then assert(env.set(kv:sub(1, eq - 1), kv:sub(eq + 1))) end
  end
end

local function contains(list, v)
  for _, x in ipairs(list) do
    if x == v then return true end
  end
  return false
end

describe("tether.env", function()
  local saved

  before_each(function()
    saved = env.environ()
  end)

  after_each(function()
    restore(saved)
  end)

  describe("set, get and unset", function()
    it("sets a variable that get returns", function()
      assert.is_true(env.set("TETHER_SPEC_A", "hello"))
      assert.are.equal("hello", env.get("TETHER_SPEC_A"))
    end)

    it("replaces an existing value", function()
      env.set("TETHER_SPEC_A", "one")
      env.set("TETHER_SPEC_A", "two")
      assert.are.equal("two", env.get("TETHER_SPEC_A"))
    end)

    it("accepts a number as the value", function()
      assert.is_true(env.set("TETHER_SPEC_N", 42))
      assert.are.equal("42", env.get("TETHER_SPEC_N"))
    end)

    it("keeps '=' and spaces inside a value", function()
      env.set("TETHER_SPEC_A", "a=b c")
      assert.are.equal("a=b c", env.get("TETHER_SPEC_A"))
    end)

    it("returns long values whole", function()
      local long = string.rep("x", 100000)
      env.set("TETHER_SPEC_LONG", long)
      assert.are.equal(long, env.get("TETHER_SPEC_LONG"))
    end)

    it("unsets a variable", function()
      env.set("TETHER_SPEC_A", "x")
      assert.is_true(env.unset("TETHER_SPEC_A"))
      assert.is_nil(env.get("TETHER_SPEC_A"))
    end)

    it("unsets a variable that was not set without complaint", function()
      assert.is_true(env.unset("TETHER_SPEC_NEVER_SET"))
    end)

    it("returns nil for an unset variable", function()
      assert.is_nil(env.get("TETHER_SPEC_NEVER_SET"))
    end)
  end)

  describe("get with a default", function()
    it("returns the default when the variable is unset", function()
      assert.are.equal("dflt", env.get("TETHER_SPEC_NEVER_SET", "dflt"))
    end)

    it("returns an empty value, not the default", function()
      env.set("TETHER_SPEC_EMPTY", "")
      assert.are.equal("", env.get("TETHER_SPEC_EMPTY", "dflt"))
    end)

    it("returns the value when set", function()
      env.set("TETHER_SPEC_A", "v")
      assert.are.equal("v", env.get("TETHER_SPEC_A", "dflt"))
    end)
  end)

  describe("lookup", function()
    it("returns nil, false for an unset variable", function()
      local v, present = env.lookup("TETHER_SPEC_NEVER_SET")
      assert.is_nil(v)
      assert.is_false(present)
    end)

    it("returns '', true for an empty variable", function()
      env.set("TETHER_SPEC_EMPTY", "")
      local v, present = env.lookup("TETHER_SPEC_EMPTY")
      assert.are.equal("", v)
      assert.is_true(present)
    end)

    it("returns the value, true for a set variable", function()
      env.set("TETHER_SPEC_A", "v")
      local v, present = env.lookup("TETHER_SPEC_A")
      assert.are.equal("v", v)
      assert.is_true(present)
    end)
  end)

  describe("argument checks", function()
    local cases = {
      { "get", function() env.get("") end, "bad argument #1 to 'get' (key must not be empty)" },
      { "get", function() env.get("A=B") end, "bad argument #1 to 'get' (key must not contain '=')" },
      { "get", function() env.get("A\0B") end, "bad argument #1 to 'get' (key must not contain NUL)" },
      { "get", function() env.get(nil) end, "bad argument #1 to 'get' (string expected, got nil)" },
      { "lookup", function() env.lookup("A=B") end, "bad argument #1 to 'lookup' (key must not contain '=')" },
      { "set", function() env.set("A=B", "x") end, "bad argument #1 to 'set' (key must not contain '=')" },
      { "set", function() env.set("A\0B", "x") end, "bad argument #1 to 'set' (key must not contain NUL)" },
      { "set", function() env.set("", "x") end, "bad argument #1 to 'set' (key must not be empty)" },
      { "set", function() env.set(1, "x") end, "bad argument #1 to 'set' (string expected, got number)" },
      { "set", function() env.set("TETHER_SPEC_A", "a\0b") end,
        "bad argument #2 to 'set' (value must not contain NUL)" },
      { "set", function() env.set("TETHER_SPEC_A", nil) end,
        "bad argument #2 to 'set' (string expected, got nil)" },
      { "set", function() env.set("TETHER_SPEC_A", {}) end,
        "bad argument #2 to 'set' (string expected, got table)" },
      { "unset", function() env.unset("A=B") end, "bad argument #1 to 'unset' (key must not contain '=')" },
      { "secret", function() env.secret("") end, "bad argument #1 to 'secret' (key must not be empty)" },
      { "environ", function() env.environ(true) end, "bad argument #1 to 'environ' (table expected, got boolean)" },
      { "expand", function() env.expand(nil) end, "bad argument #1 to 'expand' (string expected, got nil)" },
      { "expand", function() env.expand("$A", 5) end,
        "bad argument #2 to 'expand' (function or table expected, got number)" },
    }
    for i, c in ipairs(cases) do
      it(c[1] .. " raises naming the argument (case " .. i .. ")", function()
        assert.has_error(c[2], c[3])
      end)
    end

    it("leaves the environment unchanged after a rejected set", function()
      pcall(env.set, "TETHER_SPEC_A", "a\0b")
      assert.is_nil(env.get("TETHER_SPEC_A"))
    end)

    it("points the error at the caller's line", function()
      local ok, msg = pcall(function() env.set("A=B", "x") end)
      assert.is_false(ok)
      assert.matches("^spec[/\\]env_spec%.lua:%d+: bad argument #1 to 'set'", msg)
    end)

    it("is enforced by the C core too", function()
      assert.error_matches(function() core.env_set("A=B", "x") end, "key must not contain '='", 1, true)
      assert.error_matches(function() core.env_set("A\0B", "x") end, "key must not contain NUL", 1, true)
      assert.error_matches(function() core.env_set("A", "x\0y") end, "value must not contain NUL", 1, true)
      assert.error_matches(function() core.env_get("") end, "key must not be empty", 1, true)
      assert.error_matches(function() core.env_unset("A\0") end, "key must not contain NUL", 1, true)
    end)
  end)

  describe("child processes", function()
    it("see a variable set with env.set", function()
      env.set("TETHER_SPEC_CHILD", "from lua")
      local p = assert(io.popen("printenv TETHER_SPEC_CHILD"))
      local out = p:read("*a")
      p:close()
      assert.are.equal("from lua\n", out)
    end)

    it("do not see a variable removed with env.unset", function()
      env.set("TETHER_SPEC_CHILD", "x")
      env.unset("TETHER_SPEC_CHILD")
      local p = assert(io.popen("printenv TETHER_SPEC_CHILD"))
      local out = p:read("*a")
      p:close()
      assert.are.equal("", out)
    end)
  end)

  describe("environ and clear", function()
    it("lists set variables as K=V", function()
      env.set("TETHER_SPEC_A", "1")
      env.set("TETHER_SPEC_EMPTY", "")
      local list = env.environ()
      assert.is_true(contains(list, "TETHER_SPEC_A=1"))
      assert.is_true(contains(list, "TETHER_SPEC_EMPTY="))
    end)

    it("returns a copy that does not change with the environment", function()
      local list = env.environ()
      local n = #list
      env.set("TETHER_SPEC_A", "1")
      assert.are.equal(n, #list)
      assert.are.equal(n + 1, #env.environ())
    end)

    it("clears every variable", function()
      env.set("TETHER_SPEC_A", "1")
      assert.is_true(env.clear())
      assert.are.same({}, env.environ())
      assert.is_nil(env.get("TETHER_SPEC_A"))
      assert.is_nil(env.get("PATH"))
    end)

    it("can be restored after clear from a saved environ", function()
      env.set("TETHER_SPEC_A", "keep me")
      local before = env.environ()
      env.clear()
      restore(before)
      assert.are.same(before, env.environ())
      assert.are.equal("keep me", env.get("TETHER_SPEC_A"))
    end)

    it("lists many long variables whole", function()
      env.clear()
      local want = {}
      for i = 1, 200 do
        local name, value = "TETHER_SPEC_" .. i, string.rep(string.char(65 + i % 26), i * 10)
        env.set(name, value)
        want[i] = name .. "=" .. value
      end
      assert.are.same(want, env.environ())
    end)
  end)

  describe("environ{redact=true}", function()
    it("redacts the values of names that look secret, in any case", function()
      env.clear()
      env.set("GITHUB_TOKEN", "ghp_1")
      env.set("db_password", "hunter2")
      env.set("My_Secret", "s")
      env.set("OLD_PASSWD", "p")
      env.set("API_KEY", "k")
      env.set("AWS_CREDENTIALS", "c")
      env.set("SSH_AUTH_SOCK", "/tmp/a")
      env.set("PRIVATE_THING", "x")
      env.set("HOME", "/home/me")
      env.set("EMPTY_TOKEN", "")
      assert.are.same({
        "GITHUB_TOKEN=<redacted>",
        "db_password=<redacted>",
        "My_Secret=<redacted>",
        "OLD_PASSWD=<redacted>",
        "API_KEY=<redacted>",
        "AWS_CREDENTIALS=<redacted>",
        "SSH_AUTH_SOCK=<redacted>",
        "PRIVATE_THING=<redacted>",
        "HOME=/home/me",
        "EMPTY_TOKEN=<redacted>",
      }, env.environ { redact = true })
    end)

    it("does not change the environment itself", function()
      env.set("TETHER_SPEC_TOKEN", "t0k")
      env.environ { redact = true }
      assert.are.equal("t0k", env.get("TETHER_SPEC_TOKEN"))
      assert.is_true(contains(env.environ(), "TETHER_SPEC_TOKEN=t0k"))
      assert.is_true(contains(env.environ { redact = false }, "TETHER_SPEC_TOKEN=t0k"))
    end)

    it("tells secret-looking names with looks_secret", function()
      assert.is_true(env.looks_secret("npm_token"))
      assert.is_false(env.looks_secret("PATH"))
    end)
  end)

  describe("expand", function()
    -- Go's os.Expand test table, with its mapping.
    local function go_mapping(s)
      local m = { ["*"] = "all the args", ["#"] = "NARGS", ["$"] = "PID",
        ["1"] = "ARGUMENT1", HOME = "/usr/gopher", H = "(Value of H)",
        home_1 = "/usr/foo", _ = "underscore" }
      return m[s] or ""
    end
    local go_cases = {
      { "", "" },
      { "$*", "all the args" },
      { "$$", "PID" },
      { "${*}", "all the args" },
      { "$1", "ARGUMENT1" },
      { "${1}", "ARGUMENT1" },
      { "now is the time", "now is the time" },
      { "$HOME", "/usr/gopher" },
      { "$home_1", "/usr/foo" },
      { "${HOME}", "/usr/gopher" },
      { "${H}OME", "(Value of H)OME" },
      { "A$$$#$1$H$home_1*B", "APIDNARGSARGUMENT1(Value of H)/usr/foo*B" },
      { "start$+middle$^end$", "start$+middle$^end$" },
      { "mixed$|bag$$$", "mixed$|bagPID$" },
      { "$", "$" },
      { "$}", "$}" },
      { "${", "" },
      { "${}", "" },
    }
    for _, c in ipairs(go_cases) do
      it(("expands %q to %q as Go does"):format(c[1], c[2]), function()
        assert.are.equal(c[2], env.expand(c[1], go_mapping))
      end)
    end

    it("takes a table as the mapping; missing names become empty", function()
      assert.are.equal("a=1 b= c=3", env.expand("a=$A b=$B c=${C}", { A = "1", C = 3 }))
    end)

    it("treats a nil result of a mapping function as empty", function()
      assert.are.equal("[]", env.expand("[$X]", function() return nil end))
    end)

    it("reads the environment when no mapping is given", function()
      env.set("TETHER_SPEC_A", "v")
      env.unset("TETHER_SPEC_UNSET")
      assert.are.equal("v/v/v_x/", env.expand("$TETHER_SPEC_A/${TETHER_SPEC_A}/${TETHER_SPEC_A}_x/$TETHER_SPEC_UNSET"))
    end)

    it("gives '' for names the environment cannot hold", function()
      assert.are.equal("[]", env.expand("[${A=B}]"))
    end)

    it("returns a string without '$' unchanged", function()
      assert.are.equal("plain text", env.expand("plain text"))
    end)
  end)

  describe("secret", function()
    it("hides the value from tostring and concatenation", function()
      env.set("TETHER_SPEC_TOKEN", "t0k")
      local s = env.secret("TETHER_SPEC_TOKEN")
      assert.are.equal("<redacted>", tostring(s))
      assert.are.equal("token=<redacted>", "token=" .. s)
      assert.are.equal("<redacted>!", s .. "!")
      assert.are.equal("<redacted><redacted>", s .. s)
    end)

    it("gives the value with reveal", function()
      env.set("TETHER_SPEC_TOKEN", "t0k")
      local s = env.secret("TETHER_SPEC_TOKEN")
      assert.are.equal("t0k", s:reveal())
      assert.are.equal("TETHER_SPEC_TOKEN", s.name)
      assert.is_true(env.is_secret(s))
      assert.is_false(env.is_secret("t0k"))
    end)

    it("keeps the value it read when the variable changes", function()
      env.set("TETHER_SPEC_TOKEN", "old")
      local s = env.secret("TETHER_SPEC_TOKEN")
      env.set("TETHER_SPEC_TOKEN", "new")
      assert.are.equal("old", s:reveal())
    end)

    it("does not expose the value in its fields", function()
      env.set("TETHER_SPEC_TOKEN", "t0k")
      local s = env.secret("TETHER_SPEC_TOKEN")
      for k, v in pairs(s) do
        assert.are_not.equal("t0k", v, "field " .. tostring(k))
      end
      assert.are.equal("tether.Secret", getmetatable(s))
    end)

    it("holds an empty value", function()
      env.set("TETHER_SPEC_EMPTY", "")
      assert.are.equal("", env.secret("TETHER_SPEC_EMPTY"):reveal())
    end)

    it("returns nil for an unset variable", function()
      assert.is_nil(env.secret("TETHER_SPEC_NEVER_SET"))
    end)
  end)
end)
