-- tether.context: the context tree, cancellation, causes, deadlines,
-- values, after_func, waiting and the pollable protocol.
local context = require "tether.context"
local errors = require "tether.errors"
local core = require "tether.core"

local bg = context.background()

-- Number of entries of a table (nil counts as empty).
local function count(t)
  local n = 0
  for _ in pairs(t or {}) do n = n + 1 end
  return n
end

-- True when fd is readable right now.
local function readable(fd)
  return core.poll(fd, "r", core.now()) == true
end

describe("tether.context", function()
  local saved_checkers, saved_wait_fds

  before_each(function()
    saved_checkers = {}
    for i, f in ipairs(context._checkers) do saved_checkers[i] = f end
    saved_wait_fds = context._wait_fds
  end)

  after_each(function()
    for i = #context._checkers, 1, -1 do context._checkers[i] = nil end
    for i, f in ipairs(saved_checkers) do context._checkers[i] = f end
    context._wait_fds = saved_wait_fds
  end)

  describe("background and todo", function()
    it("are never done, have no deadline, no values and no cause", function()
      for _, ctx in ipairs { context.background(), context.todo() } do
        assert.is_false(ctx:done())
        assert.is_nil(ctx:err())
        assert.is_nil(ctx:deadline())
        assert.is_nil(ctx:value("k"))
        assert.is_nil(context.cause(ctx))
        assert.is_nil(ctx:timeout())
        assert.are.equal(-1, ctx:pollfd())
        assert.are.equal("r", ctx:events())
      end
    end)

    it("return the same object on every call", function()
      assert.are.equal(context.background(), context.background())
      assert.are.equal(context.todo(), context.todo())
      assert.are_not.equal(context.background(), context.todo())
    end)

    it("are named as in Go", function()
      assert.are.equal("context.Background", tostring(context.background()))
      assert.are.equal("context.TODO", tostring(context.todo()))
      local ctx = context.with_value(context.with_cancel(bg), "k", 1)
      assert.are.equal("context.Background.WithCancel.WithValue", tostring(ctx))
    end)

    it("wait(timeout) returns false when the timeout runs out", function()
      assert.is_false(bg:wait(0.01))
    end)
  end)

  describe("sentinels", function()
    it("re-exports errors.Canceled and errors.DeadlineExceeded as the same objects", function()
      assert.are.equal(errors.Canceled, context.Canceled)
      assert.are.equal(errors.DeadlineExceeded, context.DeadlineExceeded)
      assert.are.equal("context canceled", tostring(context.Canceled))
      assert.are.equal("context deadline exceeded", tostring(context.DeadlineExceeded))
    end)

    it("is_context tells contexts from other values", function()
      assert.is_true(context.is_context(bg))
      assert.is_true(context.is_context((context.with_cancel(bg))))
      assert.is_false(context.is_context({}))
      assert.is_false(context.is_context(nil))
    end)
  end)

  describe("with_cancel", function()
    it("is not done until cancel is called, then err is the Canceled sentinel", function()
      local ctx, cancel = context.with_cancel(bg)
      assert.is_false(ctx:done())
      assert.is_nil(ctx:err())
      cancel()
      assert.is_true(ctx:done())
      assert.is_true(rawequal(context.Canceled, ctx:err()))
      assert.is_true(errors.is(ctx:err(), context.Canceled))
      assert.is_false(errors.is(ctx:err(), context.DeadlineExceeded))
    end)

    it("cancels children and grandchildren, through with_value too", function()
      local parent, cancel = context.with_cancel(bg)
      local child = context.with_cancel(parent)
      local valued = context.with_value(child, "k", "v")
      local grandchild = context.with_cancel(valued)
      local timed = context.with_timeout(grandchild, 3600)
      cancel()
      for _, ctx in ipairs { parent, child, valued, grandchild, timed } do
        assert.is_true(ctx:done())
        assert.are.equal(context.Canceled, ctx:err())
        assert.are.equal(context.Canceled, context.cause(ctx))
      end
    end)

    it("does not cancel the parent or siblings when a child is cancelled", function()
      local parent, cancel_parent = context.with_cancel(bg)
      local child, cancel_child = context.with_cancel(parent)
      local sibling = context.with_cancel(parent)
      local grandchild = context.with_cancel(child)
      cancel_child()
      assert.are.equal(context.Canceled, child:err())
      assert.are.equal(context.Canceled, grandchild:err())
      assert.is_false(parent:done())
      assert.is_false(sibling:done())
      cancel_parent()
    end)

    it("is idempotent: a second cancel changes nothing", function()
      local ctx, cancel = context.with_cancel_cause(bg)
      local first = errors.new("first")
      cancel(first)
      cancel(errors.new("second"))
      assert.are.equal(context.Canceled, ctx:err())
      assert.are.equal(first, context.cause(ctx))
    end)

    it("makes a child of a done parent done at once, with the parent's err and cause", function()
      local parent, cancel = context.with_cancel_cause(bg)
      local why = errors.new("why")
      cancel(why)
      local child = context.with_cancel(parent)
      local timed = context.with_timeout(parent, -1)
      assert.are.equal(context.Canceled, child:err())
      assert.are.equal(why, context.cause(child))
      assert.are.equal(context.Canceled, timed:err())
      assert.are.equal(why, context.cause(timed))
      assert.are.equal(0, count(parent._children))
    end)

    it("removes a cancelled child from its parent's children", function()
      local parent, cancel_parent = context.with_cancel(bg)
      local a, cancel_a = context.with_cancel(parent)
      local b = context.with_timeout(parent, 3600)
      assert.are.equal(2, count(parent._children))
      assert.is_true(parent._children[a])
      assert.is_true(parent._children[b])
      cancel_a()
      assert.are.equal(1, count(parent._children))
      assert.is_nil(parent._children[a])
      cancel_parent()
      assert.are.equal(0, count(parent._children))
      assert.are.equal(0, count(b._children))
    end)

    it("registers a child of a with_value with the nearest cancellable ancestor", function()
      local parent, cancel = context.with_cancel(bg)
      local child, cancel_child = context.with_cancel(context.with_value(parent, "k", 1))
      assert.is_true(parent._children[child])
      cancel_child()
      assert.are.equal(0, count(parent._children))
      cancel()
    end)

    it("keeps no children under background", function()
      local _, cancel = context.with_cancel(bg)
      assert.is_nil(rawget(bg, "_children"))
      cancel()
    end)
  end)

  describe("cause", function()
    it("is the cause given to with_cancel_cause's cancel, while err stays Canceled", function()
      local ctx, cancel = context.with_cancel_cause(bg)
      local why = errors.new("shutting down")
      cancel(why)
      assert.are.equal(context.Canceled, ctx:err())
      assert.are.equal(why, context.cause(ctx))
    end)

    it("reaches descendants with the cause of the cancelled ancestor", function()
      local parent, cancel = context.with_cancel_cause(bg)
      local child = context.with_cancel(context.with_value(parent, "k", 1))
      local grandchild = context.with_value(child, "j", 2)
      cancel("a plain string cause")
      assert.are.equal("a plain string cause", context.cause(child))
      assert.are.equal("a plain string cause", context.cause(grandchild))
    end)

    it("defaults to err: Canceled for a nil cause and for with_cancel", function()
      local a, cancel_a = context.with_cancel_cause(bg)
      cancel_a(nil)
      assert.are.equal(context.Canceled, context.cause(a))
      local b, cancel_b = context.with_cancel(bg)
      cancel_b()
      assert.are.equal(context.Canceled, context.cause(b))
    end)

    it("is DeadlineExceeded after a deadline", function()
      local ctx = context.with_deadline(bg, core.now() - 1)
      assert.are.equal(context.DeadlineExceeded, context.cause(ctx))
    end)

    it("is nil while the context is not done, and for without_cancel", function()
      local ctx, cancel = context.with_cancel_cause(bg)
      assert.is_nil(context.cause(ctx))
      cancel(errors.new("x"))
      assert.is_nil(context.cause(context.without_cancel(ctx)))
    end)
  end)

  describe("deadlines", function()
    it("with_timeout is not done at once, and is done with DeadlineExceeded after its deadline", function()
      local ctx, cancel = context.with_timeout(bg, 0.05)
      assert.is_false(ctx:done())
      assert.is_nil(ctx:err())
      local t0 = core.now()
      assert.is_true(ctx:wait(2))
      local elapsed = core.now() - t0
      assert.is_true(elapsed < 1.5, "waited " .. elapsed .. " s")
      assert.is_true(core.now() >= ctx:deadline())
      assert.are.equal(context.DeadlineExceeded, ctx:err())
      assert.are.equal(context.DeadlineExceeded, context.cause(ctx))
      assert.is_true(errors.is(ctx:err(), errors.ErrTimeout))
      cancel()
      assert.are.equal(context.DeadlineExceeded, ctx:err())
    end)

    it("with_timeout sets the deadline seconds from now", function()
      local before = core.now()
      local ctx, cancel = context.with_timeout(bg, 10)
      local after = core.now()
      assert.is_true(ctx:deadline() >= before + 10 and ctx:deadline() <= after + 10)
      local left = ctx:timeout()
      assert.is_true(left > 9 and left <= 10)
      cancel()
      assert.are.equal(0, ctx:timeout())
    end)

    it("with_deadline sets exactly that deadline", function()
      local t = core.now() + 60
      local ctx, cancel = context.with_deadline(bg, t)
      assert.are.equal(t, ctx:deadline())
      cancel()
    end)

    it("is done at once for a deadline in the past or a timeout <= 0", function()
      local past = context.with_deadline(bg, core.now() - 1)
      local zero = context.with_timeout(bg, 0)
      local negative = context.with_timeout(bg, -5)
      for _, ctx in ipairs { past, zero, negative } do
        assert.is_true(ctx:done())
        assert.are.equal(context.DeadlineExceeded, ctx:err())
      end
    end)

    it("gives a child the earlier of its own and the parent's deadline", function()
      local t = core.now() + 60
      local parent, cancel = context.with_deadline(bg, t)
      local later = context.with_timeout(parent, 3600)
      local earlier = context.with_deadline(parent, t - 30)
      local plain = context.with_cancel(context.with_value(parent, "k", 1))
      assert.are.equal(t, later:deadline())
      assert.are.equal(t - 30, earlier:deadline())
      assert.are.equal(t, plain:deadline())
      assert.are.equal(t, context.with_value(parent, "k", 1):deadline())
      assert.is_nil(context.with_cancel(bg):deadline())
      cancel()
    end)

    it("means no deadline of its own for math.huge", function()
      local a = context.with_deadline(bg, math.huge)
      local b = context.with_timeout(bg, math.huge)
      assert.is_nil(a:deadline())
      assert.is_nil(b:deadline())
      assert.is_false(a:done())
    end)

    it("is noticed through a child: parent and child are both done with DeadlineExceeded", function()
      local parent = context.with_timeout(bg, 0.02)
      local child = context.with_cancel(parent)
      assert.is_true(child:wait(2))
      assert.are.equal(context.DeadlineExceeded, child:err())
      assert.are.equal(context.DeadlineExceeded, rawget(parent, "_err"))
      assert.are.equal(context.DeadlineExceeded, parent:err())
    end)

    it("gives DeadlineExceeded to a cancel that comes after the deadline passed unnoticed", function()
      local ctx, cancel = context.with_timeout(bg, 0.01)
      require("tether").sleep(0.05)
      cancel()
      assert.are.equal(context.DeadlineExceeded, ctx:err())
    end)

    it("gives a child whose own deadline passed DeadlineExceeded when the parent is cancelled later", function()
      local parent, cancel = context.with_cancel(bg)
      local child = context.with_timeout(parent, 0.01)
      require("tether").sleep(0.05)
      cancel()
      assert.are.equal(context.Canceled, parent:err())
      assert.are.equal(context.DeadlineExceeded, child:err())
    end)

    it("cancel before the deadline gives Canceled", function()
      local ctx, cancel = context.with_timeout(bg, 3600)
      cancel()
      assert.are.equal(context.Canceled, ctx:err())
    end)
  end)

  describe("without_cancel", function()
    it("is never done while its parent is cancelled, and keeps the parent's values", function()
      local parent, cancel = context.with_cancel(context.with_value(bg, "user", "ann"))
      local detached = context.without_cancel(parent)
      local child = context.with_cancel(detached)
      cancel()
      assert.is_true(parent:done())
      assert.is_false(detached:done())
      assert.is_nil(detached:err())
      assert.is_false(child:done())
      assert.are.equal("ann", detached:value("user"))
      assert.are.equal("ann", child:value("user"))
      assert.is_false(detached:wait(0.01))
    end)

    it("has no deadline even when the parent has one", function()
      local parent, cancel = context.with_timeout(bg, 60)
      assert.is_nil(context.without_cancel(parent):deadline())
      assert.is_nil(context.without_cancel(parent):timeout())
      assert.are.equal(-1, context.without_cancel(parent):pollfd())
      cancel()
    end)

    it("does not stay done past an expired parent deadline", function()
      local parent = context.with_timeout(bg, -1)
      assert.is_true(parent:done())
      assert.is_false(context.without_cancel(parent):done())
    end)
  end)

  describe("after_func", function()
    it("runs f once, when cancel is called", function()
      local ctx, cancel = context.with_cancel(bg)
      local calls = 0
      context.after_func(ctx, function()
        calls = calls + 1
        assert.is_true(ctx:done()) -- f runs after ctx is marked done
      end)
      assert.are.equal(0, calls)
      cancel()
      assert.are.equal(1, calls)
      cancel()
      assert.are.equal(1, calls)
    end)

    it("runs f when an ancestor is cancelled", function()
      local parent, cancel = context.with_cancel(bg)
      local child = context.with_value(context.with_cancel(parent), "k", 1)
      local calls = 0
      context.after_func(child, function() calls = calls + 1 end)
      cancel()
      assert.are.equal(1, calls)
    end)

    it("runs f once when the deadline is noticed", function()
      local ctx = context.with_timeout(bg, 0.02)
      local calls = 0
      context.after_func(ctx, function() calls = calls + 1 end)
      assert.is_true(ctx:wait(2))
      assert.are.equal(1, calls)
      assert.is_true(ctx:done())
      assert.are.equal(1, calls)
    end)

    it("stop prevents f from running and returns true; a second stop returns false", function()
      local ctx, cancel = context.with_cancel(bg)
      local calls = 0
      local stop = context.after_func(ctx, function() calls = calls + 1 end)
      assert.is_true(stop())
      assert.is_false(stop())
      cancel()
      assert.are.equal(0, calls)
    end)

    it("stop returns false after f has run", function()
      local ctx, cancel = context.with_cancel(bg)
      local stop = context.after_func(ctx, function() end)
      cancel()
      assert.is_false(stop())
    end)

    it("runs f at once for a context that is already done", function()
      local ctx, cancel = context.with_cancel(bg)
      cancel()
      local calls = 0
      local stop = context.after_func(ctx, function() calls = calls + 1 end)
      assert.are.equal(1, calls)
      assert.is_false(stop())
    end)

    it("never runs f for a context that can never be done; stop returns true once", function()
      local stop = context.after_func(bg, function() error("must not run") end)
      assert.is_true(stop())
      assert.is_false(stop())
    end)

    it("runs callbacks in registration order", function()
      local ctx, cancel = context.with_cancel(bg)
      local order = {}
      for i = 1, 5 do
        context.after_func(ctx, function() order[#order + 1] = i end)
      end
      cancel()
      assert.are.same({ 1, 2, 3, 4, 5 }, order)
    end)

    it("raises f's error from cancel after the whole tree is cancelled and the other callbacks ran", function()
      local parent, cancel = context.with_cancel(bg)
      local child = context.with_cancel(parent)
      local ran = false
      context.after_func(parent, function() error("boom", 0) end)
      context.after_func(child, function() ran = true end)
      assert.has_error(cancel, "boom")
      assert.is_true(ran)
      assert.are.equal(context.Canceled, parent:err())
      assert.are.equal(context.Canceled, child:err())
    end)
  end)

  describe("value", function()
    it("looks up through the chain, and the nearest with_value wins", function()
      local a = context.with_value(bg, "k", "outer")
      local b, cancel = context.with_cancel(a)
      local c = context.with_value(b, "other", 2)
      local d = context.with_value(c, "k", "inner")
      assert.are.equal("outer", b:value("k"))
      assert.are.equal("outer", c:value("k"))
      assert.are.equal("inner", d:value("k"))
      assert.are.equal(2, d:value("other"))
      assert.is_nil(a:value("other"))
      assert.is_nil(d:value("missing"))
      assert.is_nil(d:value(nil))
      cancel()
      assert.are.equal("inner", d:value("k"))
    end)

    it("takes any non-nil key, compared by identity for tables", function()
      local key = {}
      local ctx = context.with_value(bg, key, false)
      assert.is_false(ctx:value(key))
      assert.is_nil(ctx:value({}))
    end)

    it("shares the parent's cancellation", function()
      local parent, cancel = context.with_cancel(bg)
      local ctx = context.with_value(parent, "k", 1)
      cancel()
      assert.are.equal(context.Canceled, ctx:err())
    end)
  end)

  describe("wait", function()
    it("returns false when the timeout runs out and the context is not done", function()
      local ctx, cancel = context.with_cancel(bg)
      local t0 = core.now()
      assert.is_false(ctx:wait(0.05))
      assert.is_true(core.now() - t0 >= 0.04)
      assert.is_false(ctx:wait(0))
      cancel()
    end)

    it("returns true at once when the context is done", function()
      local ctx, cancel = context.with_cancel(bg)
      cancel()
      assert.is_true(ctx:wait())
      assert.is_true(ctx:wait(0))
    end)

    it("waits on context._wait_fds and runs context._checkers when woken", function()
      local r, w = core.pipe()
      local ctx, cancel = context.with_cancel_cause(bg)
      local hook_cause = errors.new("hooked")
      context._wait_fds = function() return { r:getfd(), "r" } end
      context._checkers[#context._checkers + 1] = function()
        if readable(r) then
          r:read(16)
          cancel(hook_cause)
        end
      end
      w:write("x")
      local t0 = core.now()
      assert.is_true(ctx:wait(5))
      assert.is_true(core.now() - t0 < 2)
      assert.are.equal(hook_cause, context.cause(ctx))
      r:close()
      w:close()
    end)

    it("runs the checkers before done() and err() answer", function()
      local ctx, cancel = context.with_cancel(bg)
      context._checkers[#context._checkers + 1] = function() cancel() end
      assert.is_true(ctx:done())
      assert.are.equal(context.Canceled, ctx:err())
    end)
  end)

  describe("pollfd", function()
    it("is readable after cancel and not before", function()
      local ctx, cancel = context.with_cancel(bg)
      local fd = ctx:pollfd()
      assert.are.equal("number", type(fd))
      assert.is_true(fd >= 0)
      assert.is_false(readable(fd))
      cancel()
      assert.is_true(readable(fd))
      assert.are.equal(fd, ctx:pollfd())
    end)

    it("is readable for descendants when an ancestor is cancelled", function()
      local parent, cancel = context.with_cancel(bg)
      local child = context.with_cancel(parent)
      local fd = child:pollfd()
      cancel()
      assert.is_true(readable(fd))
    end)

    it("is shared by a with_value and its parent", function()
      local parent, cancel = context.with_cancel(bg)
      assert.are.equal(parent:pollfd(), context.with_value(parent, "k", 1):pollfd())
      cancel()
    end)

    it("is readable at once when first asked after the context is done", function()
      local ctx, cancel = context.with_cancel(bg)
      cancel()
      assert.is_true(readable(ctx:pollfd()))
    end)

    it("goes with events() 'r' and timeout() up to the deadline", function()
      local ctx, cancel = context.with_cancel(bg)
      assert.are.equal("r", ctx:events())
      ctx:pollfd()
      assert.is_nil(ctx:timeout())
      cancel()
    end)
  end)

  describe("without an eventfd (out of fds)", function()
    local real_eventfd
    before_each(function()
      real_eventfd = core.eventfd
      core.eventfd = function() return nil, core.errno.EMFILE end
    end)
    after_each(function()
      core.eventfd = real_eventfd
    end)

    it("pollfd is -1 and timeout asks to look again within 50 ms", function()
      local ctx, cancel = context.with_cancel(bg)
      assert.are.equal(-1, ctx:pollfd())
      assert.are.equal(0.05, ctx:timeout())
      cancel()
      assert.are.equal(0, ctx:timeout())
    end)

    it("wait still notices a cancellation made by a checker", function()
      local ctx, cancel = context.with_cancel(bg)
      local t0 = core.now()
      context._checkers[#context._checkers + 1] = function()
        if core.now() - t0 > 0.1 then cancel() end
      end
      assert.is_false(ctx:wait(0.02))
      assert.is_true(ctx:wait(5))
      assert.is_true(core.now() - t0 < 2)
    end)
  end)

  describe("bad arguments", function()
    local f = function() end
    local cases = {
      { "with_cancel without a parent", function() context.with_cancel() end,
        "bad argument #1 to 'with_cancel' (context expected, got nil)" },
      { "with_cancel with a table parent", function() context.with_cancel({}) end,
        "bad argument #1 to 'with_cancel' (context expected, got table)" },
      { "with_cancel_cause with a string parent", function() context.with_cancel_cause("bg") end,
        "bad argument #1 to 'with_cancel_cause' (context expected, got string)" },
      { "with_timeout with a non-context parent", function() context.with_timeout(1, 1) end,
        "bad argument #1 to 'with_timeout' (context expected, got number)" },
      { "with_timeout with string seconds", function() context.with_timeout(bg, "1") end,
        "bad argument #2 to 'with_timeout' (number expected, got string)" },
      { "with_timeout with nil seconds", function() context.with_timeout(bg) end,
        "bad argument #2 to 'with_timeout' (number expected, got nil)" },
      { "with_timeout with NaN seconds", function() context.with_timeout(bg, 0 / 0) end,
        "bad argument #2 to 'with_timeout' (number expected, got NaN)" },
      { "with_deadline with a non-context parent", function() context.with_deadline(nil, 1) end,
        "bad argument #1 to 'with_deadline' (context expected, got nil)" },
      { "with_deadline with a boolean time", function() context.with_deadline(bg, true) end,
        "bad argument #2 to 'with_deadline' (number expected, got boolean)" },
      { "with_value with a non-context parent", function() context.with_value(nil, "k", 1) end,
        "bad argument #1 to 'with_value' (context expected, got nil)" },
      { "with_value with a nil key", function() context.with_value(bg, nil, 1) end,
        "bad argument #2 to 'with_value' (key must not be nil)" },
      { "with_value with a NaN key", function() context.with_value(bg, 0 / 0, 1) end,
        "bad argument #2 to 'with_value' (key must not be NaN)" },
      { "without_cancel with a non-context parent", function() context.without_cancel(f) end,
        "bad argument #1 to 'without_cancel' (context expected, got function)" },
      { "after_func with a non-context", function() context.after_func(nil, f) end,
        "bad argument #1 to 'after_func' (context expected, got nil)" },
      { "after_func with a non-function", function() context.after_func(bg, "f") end,
        "bad argument #2 to 'after_func' (function expected, got string)" },
      { "cause with a non-context", function() context.cause({}) end,
        "bad argument #1 to 'cause' (context expected, got table)" },
      { "wait with string timeout", function() bg:wait("1") end,
        "bad argument #1 to 'wait' (number expected, got string)" },
      { "err called with a dot", function() bg.err() end,
        "bad argument #1 to 'err' (context expected, got nil)" },
    }
    for _, case in ipairs(cases) do
      it("raises naming the argument: " .. case[1], function()
        assert.has_error(case[2], case[3])
      end)
    end

    it("refuses _cancel on a context that cannot be cancelled", function()
      assert.has_error(function() bg:_cancel() end,
        "context: _cancel needs a context made by with_cancel, with_timeout or with_deadline")
    end)
  end)

  describe("_cancel (internal)", function()
    it("cancels with the given err and cause, and returns whether it did", function()
      local ctx = context.with_cancel(bg)
      local child = context.with_cancel(ctx)
      assert.is_true(ctx:_cancel(context.Canceled, "sig"))
      assert.is_false(ctx:_cancel())
      assert.are.equal(context.Canceled, child:err())
      assert.are.equal("sig", context.cause(child))
    end)
  end)
end)
