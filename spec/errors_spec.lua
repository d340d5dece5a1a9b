-- tether.errors: messages, fields, is() through wrapping, sentinels.
local errors = require "tether.errors"
local core = require "tether.core"

local E = core.errno

describe("tether.errors", function()
  describe("from_errno", function()
    it("formats op path: strerror like Go's PathError", function()
      local err = errors.from_errno("chdir", "/nope", E.ENOENT)
      assert.are.equal("chdir /nope: no such file or directory", tostring(err))
    end)

    it("formats op: strerror when path is nil", function()
      local err = errors.from_errno("setsid", nil, E.EPERM)
      assert.are.equal("setsid: operation not permitted", tostring(err))
    end)

    it("sets op, path, errno, code and step", function()
      local err = errors.from_errno("exec", "/bin/x", E.EACCES, "exec")
      assert.are.equal("exec", err.op)
      assert.are.equal("/bin/x", err.path)
      assert.are.equal(E.EACCES, err.errno)
      assert.are.equal("EACCES", err.code)
      assert.are.equal("exec", err.step)
    end)

    it("leaves step nil when not given", function()
      assert.is_nil(errors.from_errno("open", "/x", E.ENOENT).step)
    end)

    it("raises naming the argument when errno is not a number", function()
      assert.has_error(function() errors.from_errno("open", "/x", "ENOENT") end,
        "bad argument #3 to 'from_errno' (number expected, got string)")
    end)
  end)

  describe("new", function()
    it("uses msg as the whole message when given", function()
      local err = errors.new { msg = "boom", op = "read", errno = E.EIO }
      assert.are.equal("boom", tostring(err))
      assert.are.equal("EIO", err.code)
    end)

    it("takes a plain string as the message, like Go's errors.New", function()
      assert.are.equal("plain", tostring(errors.new("plain")))
    end)

    it("quotes the path of an exec error around the wrapped message", function()
      local err = errors.new { op = "exec", path = "nope", err = errors.ErrNotFound }
      assert.are.equal('exec: "nope": executable file not found in $PATH', tostring(err))
      assert.are.equal("exec", err.op)
      assert.are.equal("nope", err.path)
      assert.is_nil(err.errno)
    end)

    it("escapes quotes and control characters in an exec path", function()
      local err = errors.new { op = "exec", path = 'a"b\n', err = errors.ErrNotFound }
      assert.are.equal('exec: "a\\"b\\n": executable file not found in $PATH', tostring(err))
    end)

    it("formats op path: wrapped for other ops", function()
      local inner = errors.from_errno("open", "/etc/x", E.EACCES)
      local err = errors.new { op = "load", path = "config", err = inner }
      assert.are.equal("load config: open /etc/x: permission denied", tostring(err))
    end)

    it("formats op: wrapped without a path and path: wrapped without an op", function()
      assert.are.equal("op: context canceled",
        tostring(errors.new { op = "op", err = errors.Canceled }))
      assert.are.equal("p: context canceled",
        tostring(errors.new { path = "p", err = errors.Canceled }))
    end)

    it("falls back to the code, then to 'unknown error'", function()
      assert.are.equal("x: EWEIRD", tostring(errors.new { op = "x", code = "EWEIRD" }))
      assert.are.equal("unknown error", tostring(errors.new {}))
    end)

    it("keeps extra fields", function()
      local err = errors.new { msg = "exit status 3", exit_code = 3 }
      assert.are.equal(3, err.exit_code)
    end)

    it("does not share the fields table it was given", function()
      local fields = { msg = "a" }
      local err = errors.new(fields)
      fields.msg = "b"
      assert.are.equal("a", tostring(err))
    end)

    it("raises naming the argument on a bad type", function()
      assert.has_error(function() errors.new(42) end,
        "bad argument #1 to 'new' (table or string expected, got number)")
      assert.has_error(function() errors.new { errno = "x" } end,
        "bad argument #1 to 'new' (field 'errno' must be a number)")
    end)
  end)

  describe("concatenation", function()
    local err = errors.from_errno("chdir", "/nope", E.ENOENT)

    it("gives the message with the error on the right", function()
      assert.are.equal("failed: chdir /nope: no such file or directory", "failed: " .. err)
    end)

    it("gives the message with the error on the left", function()
      assert.are.equal("chdir /nope: no such file or directory!", err .. "!")
    end)

    it("works with numbers and with two errors", function()
      assert.are.equal("1 context canceled", 1 .. " " .. errors.Canceled)
      assert.are.equal("context canceled context deadline exceeded",
        errors.Canceled .. " " .. errors.DeadlineExceeded)
    end)
  end)

  describe("is", function()
    it("is true for the target itself", function()
      assert.is_true(errors.is(errors.ErrNotFound, errors.ErrNotFound))
      assert.is_true(errors.ErrNotFound:is(errors.ErrNotFound))
    end)

    it("follows wrapping through several levels", function()
      local e1 = errors.new { op = "exec", path = "nope", err = errors.ErrNotFound }
      local e2 = errors.wrap(e1, "starting job")
      local e3 = errors.new { op = "run", err = e2 }
      assert.is_true(e3:is(errors.ErrNotFound))
      assert.is_true(errors.is(e3, e1))
      assert.is_true(errors.is(e3, e2))
      assert.is_false(e3:is(errors.ErrDot))
    end)

    it("is false for a different sentinel", function()
      assert.is_false(errors.is(errors.Canceled, errors.DeadlineExceeded))
    end)

    it("matches ErrNotExist by errno ENOENT, also through wrapping", function()
      local err = errors.from_errno("open", "/x", E.ENOENT)
      assert.is_true(err:is(errors.ErrNotExist))
      assert.is_true(errors.wrap(err, "ctx"):is(errors.ErrNotExist))
      assert.is_false(err:is(errors.ErrPermission))
    end)

    it("matches ErrPermission by EPERM and by EACCES", function()
      assert.is_true(errors.from_errno("kill", nil, E.EPERM):is(errors.ErrPermission))
      assert.is_true(errors.from_errno("open", "/x", E.EACCES):is(errors.ErrPermission))
    end)

    it("matches ErrExist by EEXIST and ErrTimeout by ETIMEDOUT", function()
      assert.is_true(errors.from_errno("mkdir", "/x", E.EEXIST):is(errors.ErrExist))
      assert.is_true(errors.from_errno("connect", nil, E.ETIMEDOUT):is(errors.ErrTimeout))
      assert.is_false(errors.from_errno("connect", nil, E.ETIMEDOUT):is(errors.ErrExist))
    end)

    it("matches an errno class by code when errno is missing", function()
      assert.is_true(errors.new { op = "x", code = "EACCES" }:is(errors.ErrPermission))
    end)

    it("counts DeadlineExceeded as ErrTimeout, but not the reverse", function()
      assert.is_true(errors.is(errors.DeadlineExceeded, errors.ErrTimeout))
      assert.is_true(errors.wrap(errors.DeadlineExceeded, "wait"):is(errors.ErrTimeout))
      assert.is_false(errors.is(errors.ErrTimeout, errors.DeadlineExceeded))
    end)

    it("honours matches given to new", function()
      local mine = errors.new { msg = "mine", matches = { errors.Canceled } }
      assert.is_true(mine:is(errors.Canceled))
      assert.is_false(mine:is(errors.DeadlineExceeded))
    end)

    it("handles nil and values that are not tether errors", function()
      assert.is_true(errors.is(nil, nil))
      assert.is_false(errors.is(nil, errors.Canceled))
      assert.is_false(errors.is(errors.Canceled, nil))
      assert.is_true(errors.is("x", "x"))
      assert.is_false(errors.is("x", errors.Canceled))
      assert.is_true(errors.is(errors.new { msg = "w", err = "x" }, "x"))
    end)
  end)

  describe("wrap and unwrap", function()
    it("prefixes the message and keeps the wrapped error", function()
      local err = errors.wrap(errors.Canceled, "waiting for job")
      assert.are.equal("waiting for job: context canceled", tostring(err))
      assert.are.equal(errors.Canceled, err.err)
      assert.are.equal(errors.Canceled, errors.unwrap(err))
      assert.are.equal(errors.Canceled, err:unwrap())
    end)

    it("returns nil when wrapping nil", function()
      assert.is_nil(errors.wrap(nil, "x"))
    end)

    it("unwraps to nil at the end of the chain and for non-errors", function()
      assert.is_nil(errors.unwrap(errors.Canceled))
      assert.is_nil(errors.unwrap("x"))
    end)
  end)

  describe("is_error", function()
    it("tells tether errors from other values", function()
      assert.is_true(errors.is_error(errors.ErrDot))
      assert.is_true(errors.is_error(errors.from_errno("x", nil, E.EIO)))
      assert.is_false(errors.is_error("x"))
      assert.is_false(errors.is_error({ msg = "x" }))
      assert.is_false(errors.is_error(nil))
    end)
  end)

  describe("sentinels", function()
    local cases = {
      { "ErrNotFound", "executable file not found in $PATH" },
      { "ErrDot", "cannot run executable found relative to current directory" },
      { "ErrProcessDone", "os: process already finished" },
      { "ErrWaitDelay", "exec: WaitDelay expired before I/O complete" },
      { "Canceled", "context canceled" },
      { "DeadlineExceeded", "context deadline exceeded" },
      { "ErrPermission", "permission denied" },
      { "ErrNotExist", "file does not exist" },
      { "ErrExist", "file already exists" },
      { "ErrTimeout", "i/o timeout" },
    }
    for _, c in ipairs(cases) do
      it(c[1] .. " has Go's message", function()
        assert.is_true(errors.is_error(errors[c[1]]))
        assert.are.equal(c[2], tostring(errors[c[1]]))
      end)
    end

    it("are distinct objects", function()
      local seen = {}
      for _, c in ipairs(cases) do
        assert.is_nil(seen[errors[c[1]]])
        seen[errors[c[1]]] = true
      end
    end)
  end)
end)
