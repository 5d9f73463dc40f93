-- wrk script: etcd v3 durable writes through its JSON gateway, the same shape as put.lua:
--   POST /v3/kv/put {"key": base64("bench/<run>/<thread>-<n>"), "value": base64(<100 bytes>)}
-- Usage: wrk ... -s benchmarks/etcd_put.lua http://etcd-follower -- [run-id]
dofile(debug.getinfo(1, "S").source:sub(2):match("^(.*/)") .. "common.lua")
dofile(debug.getinfo(1, "S").source:sub(2):match("^(.*/)") .. "base64.lua")

function init(args)
  run = args[1] or "run"
  counter = 0
  value = base64(string.rep("x", 100))
  headers = { ["Content-Type"] = "application/json" }
end

function request()
  counter = counter + 1
  local key = base64("bench/" .. run .. "/" .. tid .. "-" .. counter)
  return wrk.format("POST", "/v3/kv/put", headers, '{"key": "' .. key .. '", "value": "' .. value .. '"}')
end
