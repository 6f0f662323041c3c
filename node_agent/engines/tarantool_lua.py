"""The Lua the Tarantool adapter runs on the instance, one ``box.eval`` per call.

The pin's fencing lives here, on the server, where no agent restart can lose it:
``snapctl_backup_run`` names the run that pinned, ``snapctl_cancelled`` the prepare attempts
whose agent gave up on them, and ``snapctl_cancelled_runs`` the runs completed here while no pin
of theirs existed. A prepare runs ``box.snapshot()`` for minutes and carries on after its client
has stopped waiting, or died; it must not pin then, for nobody would ever release that pin.
"""

from __future__ import annotations

HOLDER_GLOBAL = "snapctl_backup_run"
CANCELLED_GLOBAL = "snapctl_cancelled"
# Attempts remembered as given up: one per prepare whose answer never came, so a handful at most;
# the oldest go first.
CANCELLED_KEPT = 64
# run_id -> fiber.clock() until which its prepares never pin. Kept no longer than a prepare that
# began before the run's complete may still pin, so the table holds only the last minutes' runs.
CANCELLED_RUNS_GLOBAL = "snapctl_cancelled_runs"
# The latest deadline of any prepare the server has begun: a run's cancellation outlives it.
PREPARES_UNTIL_GLOBAL = "snapctl_prepares_until"

# Shared Lua: the instance's state, and tuples per persistent user space (ids from 512 up).
_LUA_HELPERS = f"""
local HOLDER = '{HOLDER_GLOBAL}'
local PREPARES_UNTIL = '{PREPARES_UNTIL_GLOBAL}'
local function backup_pinned()
    for _, c in ipairs(box.info.gc().checkpoints) do
        for _, ref in ipairs(c.references or {{}}) do
            if ref == 'backup' or (type(ref) == 'table' and ref.name == 'backup') then return true end
        end
    end
    return false
end
local function snapctl_info()
    local info = box.info
    local gc = info.gc()
    local last = gc.checkpoints[#gc.checkpoints]
    local replication = {{}}
    for _, r in pairs(info.replication) do table.insert(replication, r) end
    local group = (info.replicaset and info.replicaset.uuid) or (info.cluster and info.cluster.uuid)
    return {{version = info.version, id = info.id, uuid = info.uuid, ro = info.ro, status = info.status,
        group = group, vclock = info.vclock, lsn = info.lsn, signature = info.signature,
        replication = replication, election = info.election, election_mode = box.cfg.election_mode,
        checkpoint_in_progress = gc.checkpoint_is_in_progress,
        checkpoint_vclock = last and last.vclock, checkpoint_signature = last and last.signature,
        pinned = backup_pinned(), holder = rawget(_G, HOLDER)}}
end
local function snapctl_tables()
    local tables = {{}}
    for _, t in box.space._space:pairs({{512}}, {{iterator = 'GE'}}) do
        local s = box.space[t[1]]
        if s ~= nil and s.index[0] ~= nil and not s.temporary then
            if s.engine == 'memtx' then tables[s.name] = s.index[0]:len()
            elseif s.engine == 'vinyl' then tables[s.name] = s.index[0]:count() end
        end
    end
    return tables
end
local function global_table(name)
    local t = rawget(_G, name)
    if t == nil then
        t = {{}}
        rawset(_G, name, t)
    end
    return t
end
-- attempt -> true, and the attempts in order in its array part
local function cancelled_attempts() return global_table('{CANCELLED_GLOBAL}') end
-- run -> until when (fiber.clock()) it stays cancelled
local function cancelled_runs() return global_table('{CANCELLED_RUNS_GLOBAL}') end
"""

STATUS_LUA = _LUA_HELPERS + "return snapctl_info()"
VERIFY_LUA = _LUA_HELPERS + "return {tables = snapctl_tables(), info = snapctl_info()}"

# attempt: this call's own id, which the agent's release names when the answer never came.
# budget_s: the agent's snapshot_timeout_s. Counted from when the server starts the call, so it
# ends after the agent stopped waiting: past it, nobody waits for this pin. Fibers yield only
# inside box.snapshot() and the wait before it, so nothing runs between the last look and
# box.backup.start(). wait_s: how long to wait for a checkpoint another fiber is writing (the
# checkpoint daemon's), short of budget_s so that "busy" reaches the agent while it waits.
PREPARE_LUA = _LUA_HELPERS + """
local run_id, take_snapshot, attempt, budget_s, wait_s = ...
local fiber = require('fiber')
local deadline = fiber.clock() + budget_s
rawset(_G, PREPARES_UNTIL, math.max(rawget(_G, PREPARES_UNTIL) or 0, deadline))
local function run_completed() return (cancelled_runs()[run_id] or 0) > fiber.clock() end
local function given_up() return cancelled_attempts()[attempt] ~= nil or fiber.clock() > deadline end
if run_completed() then return {run_completed = true} end
if given_up() then return {given_up = true} end  -- released before it ran (queued behind other requests)
local holder = rawget(_G, HOLDER)
if holder ~= nil and not backup_pinned() then
    holder = nil  -- someone ran box.backup.stop() by hand: the marker is stale
    rawset(_G, HOLDER, nil)
end
if holder ~= nil and holder ~= run_id then return {held_by = holder} end
-- Another tool's box.backup.start(): ours would refuse it, after a checkpoint written for nothing.
if holder == nil and backup_pinned() then return {pinned_by_other = true} end
local snapshot_taken = false
if holder == run_id then
    box.backup.stop()  -- our earlier answer was lost (agent restart): pin the latest checkpoint again
elseif take_snapshot then
    local wait_until = fiber.clock() + wait_s
    while box.info.gc().checkpoint_is_in_progress do  -- box.snapshot() would refuse (error 120)
        if run_completed() then return {run_completed = true} end
        if given_up() then return {given_up = true} end
        if fiber.clock() > wait_until then return {checkpoint_in_progress = true} end
        fiber.sleep(0.1)
    end
    box.snapshot()
    snapshot_taken = true
    if run_completed() then return {run_completed = true} end
    if given_up() then return {given_up = true} end
end
local files = box.backup.start()
rawset(_G, HOLDER, run_id)
local ok, result = pcall(function()
    local fio = require('fio')
    local absolute = {}
    for i, f in ipairs(files) do absolute[i] = fio.abspath(f) end
    return {files = absolute, tables = snapctl_tables(), info = snapctl_info(), snapshot_taken = snapshot_taken}
end)
if not ok then
    box.backup.stop()
    rawset(_G, HOLDER, nil)
    error(result)
end
return result
"""

# attempt (or nil): a prepare of this run whose answer never came; once this has run, it never
# pins, however long its box.snapshot() still takes. keep_s (or nil): with no pin of this run
# here, no prepare of it pins from now on: not one a dead agent left running, nor one still queued
# (for keep_s, or until every prepare begun so far is past its deadline, whichever is later).
RELEASE_LUA = _LUA_HELPERS + f"""
local run_id, attempt, keep_s = ...
if attempt ~= nil then
    local cancelled = cancelled_attempts()
    if cancelled[attempt] == nil then
        cancelled[attempt] = true
        table.insert(cancelled, attempt)
    end
    while #cancelled > {CANCELLED_KEPT} do cancelled[table.remove(cancelled, 1)] = nil end
end
local holder = rawget(_G, HOLDER)
if holder ~= run_id then
    if keep_s ~= nil then
        local fiber = require('fiber')
        local now, runs = fiber.clock(), cancelled_runs()
        for id, until_ in pairs(runs) do
            if until_ <= now then runs[id] = nil end
        end
        runs[run_id] = math.max(now + keep_s, rawget(_G, PREPARES_UNTIL) or 0)
    end
    return {{released = false, holder = holder}}
end
local pinned = backup_pinned()  -- false: someone ran box.backup.stop() under our marker
box.backup.stop()
rawset(_G, HOLDER, nil)
return {{released = true, pinned = pinned}}
"""

SNAPSHOT_LUA = "box.snapshot() return box.info.signature, box.info.vclock"
