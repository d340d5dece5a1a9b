-- spec/helpers/valgrind.lua: busted --helper for `make check-valgrind`.
--
-- Valgrind (3.19) does not grow the main thread's stack when it delivers a
-- signal whose handler has SA_ONSTACK and no alternate stack is set: it
-- looks for the alternate stack, finds the unmapped reservation below the
-- stack and kills the process ("Can't extend stack to ... during signal
-- delivery for thread 1: too small or bad protection modes"). tether's
-- handler has SA_ONSTACK, and the signal specs deliver signals while the
-- stack sits at its deepest so far (right after a spawn). Growing the stack
-- once, here, by about 128 KiB (nested pcalls: C frames) avoids that.
local function deep(n)
  if n > 0 then pcall(deep, n - 1) end
end
deep(190)
