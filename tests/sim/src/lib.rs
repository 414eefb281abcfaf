//! `ollama-sim`: a faithful stand-in for a GPU node running Ollama.
//!
//! No GPUs exist where ollama-mesh is tested, yet the router's decisions depend on how Ollama
//! nodes behave: the HTTP API and its streaming, errors, and the scheduler's dynamics (slots,
//! queueing, loads and evictions, keep-alive, prompt-cache reuse). This crate simulates all of
//! that from Ollama's own sources (`server/routes.go`, `server/sched.go`, `api/types.go`, as
//! each module cites them), held to a real v0.17.4 by the differential test, fast enough (time
//! scale 0) never to be the bottleneck of a router benchmark.
//!
//! # Using it
//!
//! In-process (integration tests):
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use ollama_mesh_sim::{NodeSpec, Simulator};
//!
//! let config = NodeSpec::default().models(["tiny", "llama3.1:8b"]).time_scale(0.0).build()?;
//! let sim = Simulator::new(config);
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let url = format!("http://{}", listener.local_addr()?);
//! let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
//! let server = tokio::spawn({
//!     let sim = sim.clone();
//!     async move { sim.serve(listener, async { let _ = stopped.await; }).await }
//! });
//! // … drive `url` …
//! assert_eq!(sim.stats()["requests_total"], 0);
//! let _ = stop.send(());
//! server.await??;
//! # Ok(()) }
//! ```
//!
//! From the command line:
//! `ollama-sim --listen 127.0.0.1:0 --models tiny,llama3.1:8b --time-scale 0` prints
//! `listening on 127.0.0.1:PORT` as its first stdout line. See `ollama-sim --help` for the
//! scheduler (`--num-parallel`, also `OLLAMA_NUM_PARALLEL`, …) and fault flags, and
//! [`config`] for the TOML file (`--config`).
//!
//! # Control endpoints
//!
//! - `GET /sim/stats`: ground truth for tests. Node-wide `requests_total` (every inference
//!   request, counted on arrival before anything can fail), `requests_in_flight`,
//!   `rejected_total` (503s), `faulted_total`, `prompt_tokens`, `cached_prompt_tokens`,
//!   `generated_tokens`, `cache_hits`, `loads`, `unloads`, `evictions`, `reloads`,
//!   `queue_depth` (pending-load queue), `loading`, `slots_busy`, `slots_total`,
//!   `slot_waiters`, `vram_total_bytes`, `vram_used_bytes`, `node_name`, `time_scale`; and
//!   `models: {"<name:tag>": {requests, prompt_tokens, cached_prompt_tokens, generated_tokens,
//!   cache_hits, loads, unloads, evictions, reloads, loaded, and while loaded slots_busy,
//!   slots_total, slot_waiters, active_requests, num_ctx, size_vram}}`. The same JSON is
//!   [`Simulator::stats`].
//! - `GET /sim/faults`, `POST /sim/faults`, `DELETE /sim/faults`: read, change, or clear the
//!   faults. The POST body is a [`FaultSpec`] whose fields are all optional and change only
//!   what they name, e.g. `{"fail_next": 3}`, `{"stall_ms": 2000}`, `{"cut_after_tokens": 5}`, `{"stall_after_tokens": 5}`, `{"busy": true}`
//!   (`null` turns it off), `{"health": "slow", "health_delay_ms": 3000}`, `{"health": "hang"}`,
//!   `{"exit_after_requests": 1}`. Every answer is the complete resulting [`FaultSpec`].
//! - `POST /sim/exit`: answers `{"status":"exiting"}`, then the node dies: every connection
//!   drops, [`Simulator::serve`] returns [`ServeExit::Killed`] and the binary exits with 137.
//! - `GET /sim/nvidia-smi`: the fake GPU report (below).
//!
//! Fault injection applies to the inference endpoints (`/api/generate`, `/api/chat`,
//! `/api/embed`, `/api/embeddings` and their `/v1` twins); health faults to `/` and
//! `/api/version` only, so `/api/ps` keeps answering like Ollama's in-memory snapshot.
//!
//! # Fake nvidia-smi
//!
//! `tests/sim/fake-nvidia-smi` is an executable script standing in for `nvidia-smi` on `PATH`.
//! With `OLLAMA_SIM_URL=http://127.0.0.1:PORT` it prints that simulator's `GET /sim/nvidia-smi`
//! (which reflects the models loaded right now); without it, it prints `OLLAMA_SIM_NVIDIA_SMI`
//! verbatim, or one idle RTX 4090. It ignores its arguments: the report always has the shape of
//! `--query-gpu=name,memory.total,memory.used,utilization.gpu --format=csv,noheader,nounits`.
//!
//! # Layout
//!
//! - [`config`]: the TOML node description / builder ([`NodeSpec`], `config/spec.rs`), its
//!   validation (`config/validate.rs`) and the validated form ([`SimConfig`]).
//! - [`catalogue`]: built-in models with realistic sizes, speeds and capabilities, estimates
//!   for other tags. [`capability`]: the capabilities `/api/show` lists and requests need.
//! - `names`: Ollama model-name aliases (`x` ≡ `x:latest`).
//! - `duration`: Go durations and `keep_alive` values.
//! - `clock`: simulated time and the time scale.
//! - `scheduler`: Ollama's scheduler — `fit` (VRAM fitting and eviction order), `slots`
//!   (FIFO slots with per-slot prompt caches), `timing` (load, prefill, decode), and the
//!   pending queue, loader and keep-alive expiry in `scheduler` itself.
//! - `generation`: one generation on a slot: prefill, paced tokens, metrics. `stop`: stop
//!   sequences, matched across tokens as Ollama's runner does.
//! - `tokenizer`, `textgen`, `embedding`: deterministic stand-ins for a model's tokens, words
//!   and vectors.
//! - `registry`: the models on disk.
//! - [`faults`]: fault injection. `stats`: ground-truth counters. `gpu`: the nvidia-smi report.
//! - `api`: HTTP routing and handlers — `native` (generate/chat), `openai`, `embed`, `models`,
//!   `show`, `control` (`/sim/*`), `infer` (what all generating endpoints share), `needs` (the
//!   capability checks: `think`, `tools`, `suffix`), `body`, `error`, `request`, `host`
//!   (Ollama's Host-header check).
//! - `app`: the state shared by a node's connections; `server`: [`Simulator`] and its accept loop.
//!
//! # Deliberate differences from Ollama
//!
//! Generated text is pseudo-random words and embeddings are random unit vectors. A model's
//! capabilities are enforced with Ollama's 400s, but where a model has them, `think`, `tools`
//! and `suffix` are accepted and ignored (no `thinking` text, no tool calls); `format` and
//! images are always ignored. `/api/create` and `/api/push` answer 501; `/api/show`'s
//! `model_info` and `tensors` describe a synthetic architecture (with every `model_info` key and
//! JSON type a real llama-family GGUF shows, per-model numbers from the catalogue); a failed `/v1` stream ends with
//! an SSE event holding the OpenAI error object (Ollama emits an empty chunk); at time scale 0
//! positive keep-alives never expire. Where the newest Ollama and the v0.17.4 the tests run
//! against disagree on error details, the newest wins: `/v1` errors are
//! typed by status (v0.17.4 says `api_error` for every handler error). A missing model is
//! answered as v0.17.4 does: `400 model is required`, except on `/api/generate` and
//! `/v1/completions` (404) and on `/api/embed` and `/v1/embeddings` (500 `unqualified name`).

pub mod capability;
pub mod catalogue;
pub mod config;
pub mod faults;

mod api;
mod app;
mod clock;
mod duration;
mod embedding;
mod generation;
mod gpu;
mod names;
mod registry;
mod scheduler;
mod server;
mod stats;
mod stop;
mod textgen;
mod timefmt;
mod tokenizer;

pub use capability::{Capabilities, Capability};
pub use config::{ConfigError, NodeSpec, SimConfig};
pub use faults::{FaultSpec, Faults, HealthMode};
pub use server::{ServeExit, Simulator};
pub use textgen::OutputLength;
