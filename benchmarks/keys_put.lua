-- wrk script: durable writes of new keys at random places in the key order,
--   PUT /v1/kv/keys/<8 random hex>-<thread>-<n>   {"value": "<16 bytes>"}
-- Usage: wrk ... -s benchmarks/keys_put.lua http://follower -- [run-id]
dofile(debug.getinfo(1, "S").source:sub(2):match("^(.*/)") .. "common.lua")

function init(args)
  run = args[1] or "run"
  counter = 0
  math.randomseed(os.time() * 1000 + tid)
  body = '{"value": "' .. string.rep("x", 16) .. '"}'
  headers = { ["Content-Type"] = "application/json" }
end

function request()
  counter = counter + 1
  local key = string.format("keys/%08x-%s-%d-%d", math.random(0, 0x7fffffff), run, tid, counter)
  return wrk.format("PUT", "/v1/kv/" .. key, headers, body)
end
