-- wrk script for the simulator's non-streamed capacity (see examples/capacity.rs):
--   wrk -t1 -c64 -d5s --latency -s tests/sim/bench/wrk-generate.lua http://127.0.0.1:18000/api/generate
wrk.method = "POST"
wrk.body = '{"model":"tiny","prompt":"hi","stream":false,"options":{"num_predict":4}}'
wrk.headers["Content-Type"] = "application/json"
