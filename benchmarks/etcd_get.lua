-- wrk script: etcd v3 linearizable reads (its default) of preloaded keys, like get.lua:
--   POST /v3/kv/range {"key": base64("bench-read/k<i>")}   with i uniform in [0, keys)
-- Usage: wrk ... -s benchmarks/etcd_get.lua http://etcd-follower -- <keys>
dofile(debug.getinfo(1, "S").source:sub(2):match("^(.*/)") .. "common.lua")
dofile(debug.getinfo(1, "S").source:sub(2):match("^(.*/)") .. "base64.lua")

function init(args)
  keys = tonumber(args[1] or "1000")
  math.randomseed(os.time() * 1000 + tid)
  headers = { ["Content-Type"] = "application/json" }
  bodies = {}
  for i = 0, keys - 1 do
    bodies[i] = '{"key": "' .. base64("bench-read/k" .. i) .. '"}'
  end
end

function request()
  return wrk.format("POST", "/v3/kv/range", headers, bodies[math.random(0, keys - 1)])
end
