-- wrk script: linearizable reads (the default consistency) of preloaded keys,
--   GET /v1/kv/bench-read/k<i>   with i uniform in [0, keys)
-- Usage: wrk ... -s benchmarks/get.lua http://follower -- <keys>
dofile(debug.getinfo(1, "S").source:sub(2):match("^(.*/)") .. "common.lua")

function init(args)
  keys = tonumber(args[1] or "1000")
  math.randomseed(os.time() * 1000 + tid)
end

function request()
  return wrk.format("GET", "/v1/kv/bench-read/k" .. math.random(0, keys - 1))
end
