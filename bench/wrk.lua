-- wrk script for bench/run.sh.
--
--   wrk -t2 -c32 -d10s -s bench/wrk.lua http://127.0.0.1:PORT -- MODE FILE THREADS [BEARER] [NONCE] [XFF] [check] [PACE]
--
-- MODE:
--   verify  POST /v1/tokens/verify {"token": ...}, cycling through the tokens of FILE
--   check   GET /v1/auth/check with "Authorization: Bearer <token>", cycling through FILE
--   hello   GET /hello with "Authorization: Bearer <token>", cycling through FILE (the
--           latchkey-client example service, bench/client.sh)
--   open    GET /open with the same header as hello (the same service's unchecked route: the
--           same request bytes, so the ratio to hello is the check's cost alone)
--   mint    POST /v1/tokens {"name": ...} as BEARER, a new name every request (FILE unused)
--   signin  POST /v1/auth/token with each line of FILE as the JSON body, in turn (sign-in
--           attempts: {"email": ..., "password": ..., "name": ...})
-- XFF, when given, is sent as X-Forwarded-For (a client address behind a trusted proxy), so
-- two load generators on one machine can stand for different clients. "-" leaves an argument
-- empty. "check" (verify mode) reads every answer and counts those without "valid":true as
-- "invalid" (this costs the load generator some CPU). PACE, in milliseconds, makes every
-- connection wait that long before each request (a light, steady load instead of a closed loop
-- at full speed: for the latency a request sees when the server is not saturated).
-- FILE holds one token (signin: one request body) per line; wrk thread k (of THREADS) takes
-- lines k, k+THREADS, ... (all of them when that leaves it none), so the threads together send
-- every line.
-- done() prints one line: WRKJSON {...} with the rate, latency percentiles (microseconds) and
-- error counts.

local next_id = 0
local threads = {}

function setup(thread)
  next_id = next_id + 1
  thread:set("tid", next_id)
  threads[#threads + 1] = thread
end

local mode, requests, tokens, count, pos, bearer, nonce, minted, xff, builder

local function headers(h)
  if xff then h["X-Forwarded-For"] = xff end
  return h
end

local function verify_request(token)
  return wrk.format("POST", "/v1/tokens/verify",
    headers({ ["Content-Type"] = "application/json" }),
    '{"token":"' .. token .. '"}')
end

local function check_request(token)
  return wrk.format("GET", "/v1/auth/check", headers({ ["Authorization"] = "Bearer " .. token }))
end

local function hello_request(token)
  return wrk.format("GET", "/hello", headers({ ["Authorization"] = "Bearer " .. token }))
end

local function open_request(token)
  return wrk.format("GET", "/open", headers({ ["Authorization"] = "Bearer " .. token }))
end

local function signin_request(body)
  return wrk.format("POST", "/v1/auth/token",
    headers({ ["Content-Type"] = "application/json" }), body)
end

local function arg(v)
  if v == nil or v == "" or v == "-" then return nil end
  return v
end

function init(args)
  mode = args[1]
  local file = args[2]
  local nthreads = tonumber(args[3] or "1")
  bearer = arg(args[4]) or ""
  nonce = arg(args[5]) or tostring(os.time())
  xff = arg(args[6])
  invalid = 0
  local pace = tonumber(arg(args[8]) or "")
  if pace then
    delay = function() return pace end
  end
  if arg(args[7]) == "check" then
    response = function(status, headers, body)
      if not string.find(body, '"valid":true', 1, true) then invalid = invalid + 1 end
    end
  end
  minted = 0
  if mode == "mint" then
    return
  end
  local mine, all = {}, {}
  local i = 0
  for line in io.lines(file) do
    if line ~= "" then
      i = i + 1
      if #all < 1 then all[1] = line end
      if (i - 1) % nthreads == tid - 1 then
        mine[#mine + 1] = line
      end
    end
  end
  if #mine == 0 then mine = all end
  if #mine == 0 then error("no tokens in " .. file) end
  local builders = { verify = verify_request, check = check_request, signin = signin_request,
    hello = hello_request, open = open_request }
  local build = builders[mode]
  if not build then error("unknown mode " .. tostring(mode)) end
  -- Up to 1,000,000 requests per thread (about 250 MB) are formatted once, here; beyond, on the
  -- fly. Formatting on the fly made garbage on every request, and each collection walked the
  -- whole token table: the load generator stalled, and the baseline ran a quarter slower with
  -- 1,000,000 tokens than with one. The token lines are dropped once formatted.
  count = #mine
  pos = (tid * 7919) % count
  if count <= 1000000 then
    requests = {}
    for k = 1, count do requests[k] = build(mine[k]) end
    mine, all = nil, nil
    collectgarbage()
  else
    tokens = mine
    builder = build
  end
end

function request()
  if mode == "mint" then
    minted = minted + 1
    return wrk.format("POST", "/v1/tokens",
      headers({ ["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. bearer }),
      '{"name":"mint-' .. nonce .. "-" .. tid .. "-" .. minted .. '"}')
  end
  pos = pos + 1
  if pos > count then pos = 1 end
  if requests then return requests[pos] end
  return builder(tokens[pos])
end

function done(summary, latency, requests_)
  local e = summary.errors
  local bad = 0
  for _, t in ipairs(threads) do bad = bad + (tonumber(t:get("invalid")) or 0) end
  local secs = summary.duration / 1e6
  io.write(string.format(
    'WRKJSON {"requests":%d,"seconds":%.3f,"rps":%.1f,"p50_us":%d,"p99_us":%d,"max_us":%d,' ..
    '"socket_errors":%d,"status_errors":%d,"timeouts":%d,"invalid":%d}\n',
    summary.requests, secs, summary.requests / secs,
    latency:percentile(50), latency:percentile(99), latency.max,
    e.connect + e.read + e.write, e.status, e.timeout, bad))
end
