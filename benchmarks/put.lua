-- wrk script: durable writes. Every request PUTs a key that was never written before,
--   PUT /v1/kv/bench/<run>/<thread>-<n>   {"value": "<100 bytes>"}
-- Usage: wrk ... -s benchmarks/put.lua http://follower -- [run-id]
dofile(debug.getinfo(1, "S").source:sub(2):match("^(.*/)") .. "common.lua")

function init(args)
  run = args[1] or "run"
  counter = 0
  body = '{"value": "' .. string.rep("x", 100) .. '"}'
  headers = { ["Content-Type"] = "application/json" }
end

function request()
  counter = counter + 1
  return wrk.format("PUT", "/v1/kv/bench/" .. run .. "/" .. tid .. "-" .. counter, headers, body)
end
