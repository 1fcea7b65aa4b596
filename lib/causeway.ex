defmodule Causeway do
  @moduledoc """
  Causeway records what a running BEAM system does — function calls and
  returns, messages, GenServer state changes, process spawns and exits, errors —
  links every event to its cause, and keeps it in RocksDB so it can be queried
  from IEx long after the fact.

      {:ok, _} = Causeway.start_link(dir: "_causeway/dev")

      defmodule Demo do
        use Causeway.Instrument
        def add(a, b), do: a + b
      end

      Demo.add(1, 2)
      :ok = Causeway.flush()
      [entry, exit] = Causeway.events(pid: self())
      Causeway.call_tree(entry.call_id)

  ## Starting

  `start_link/1` options (all optional):

    * `:name` — the instance name (default `Causeway`, the one `Causeway.Runtime`
      and `use Causeway.Instrument` report to)
    * `:dir` — the RocksDB directory (default `"_causeway/data"`); created if missing
    * `:ring_size` — events per ring shard, a power of two in 2..2^24
      (default 65 536; each event slot is 128 bytes, allocated up front)
    * `:shards` — ring shards, 1..64 (default: one per scheduler). The slots
      (`shards × ring_size × 128` bytes) must fit in a quarter of the
      machine's memory and below `:memory_budget`: checked before anything
      is allocated (`{:error, %Causeway.Error{kind: :invalid_argument}}`)
    * `:overflow` — what a full ring does: `:drop_newest` (default) refuses
      the new event, `:drop_oldest` overwrites the oldest; every dropped
      event is counted. `:wait` is lossless, the mode for development and
      test suites, where completeness matters more than latency: when the
      ring of the capturing CPU is nearly full, a `Causeway.Runtime` capture
      (and so instrumented code) moves to a dirty I/O scheduler, waits
      there until the writers have made room, and records — the capturing
      process waits, no normal scheduler spins or sleeps, and emergency
      sampling is off. Only storage failures still drop (counted), and
      events from `trace/2` (whose callbacks cannot wait) are refused and
      counted as with `:drop_newest` when their ring is full
    * `:workers` — `{min, max}` native writer threads, 1..16 (default `{2, 16}`)
    * `:batch_size` (1000, in 1..1 000 000), `:flush_interval_ms` (5, in
      1..60 000) — writer batching: a writer takes up to `batch_size`
      events per write; when its rings are empty it looks again after
      0.25 ms, then 0.5, 1, 2 ms, … up to `flush_interval_ms` (so an idle
      writer wakes once per interval, and events that keep coming wait a
      fraction of a millisecond)
    * `:max_term_bytes` (2048, in 64..64 MiB), `:max_depth` (16, in 1..1000) —
      capture budget of one term. With a budget above 64 KiB, a capture
      whose terms may encode to more than that runs on a dirty scheduler
      (the caller's normal scheduler is never held for it)
    * `:redact` — keys (atoms) whose values are never captured, e.g. `[:password]`
    * `:correlation_ttl_ms` (300 000, at most a year) — how long half a
      correlation waits; `:max_pending` (250 000, at most 10^9) — how many
      half-correlations wait at most; `:max_processes` (1 000 000, at most
      10^8) — per-process capture contexts
    * `:emergency_sample` (100, in 1..1 000 000) — at the emergency
      backpressure level, keep at least one non-critical event in this
      many. The level starts there, then keeps as many as the writers keep
      up with: one in `metrics().sample_every`, halved on each check that
      finds the rings under half full, doubled when they pass 90 %. Calls
      are kept or dropped whole (an exit follows its entry); errors, state
      changes, spawns and exits are always kept. (A kept event costs the
      traced code what every event costs below the emergency level; a
      sampled-out one less: so under overload the traced code runs at
      about its normal recording speed, not faster, while the writers
      keep up)
    * `:max_retries` (8, in 0..1000), `:retry_base_ms` (10, in 1..60 000) —
      failed batch writes retry with exponential backoff, then are dropped
      and counted
    * `:memory_budget` — native memory bound in bytes (at most 2^44): the
      ring slots and the process-context table (512 KiB), allocated up
      front, plus captured payloads too big to live in the slots (default:
      those + 512 MiB). A capture that would go past it is refused and
      counted in `dropped.memory_budget`; a budget smaller than what is
      allocated up front is an error.
    * `:sync_writes` — fsync the WAL on every batch (default `false`;
      `flush/0` always syncs)
    * `:covering_pid_index` — keep each process's events inside the pid
      index too (default `true`): "what did this process do" reads them in
      one sequential scan, ~5× faster than looking each one up (1.7 M vs
      0.34 M events/s decoded in `mix bench query`), for ~1.4× the bytes on
      disk (31 vs 22 bytes per event there) and no write-throughput cost
      measurable in `mix bench pipeline`. Events bigger than 256 bytes as
      stored (large states, arguments with big binaries) are listed there by
      reference and read by id, so their bytes are written once. `false`
      saves the space. A store can be reopened with either setting; lists
      already written keep their format.
    * `:retention` — `[max_age: ms | {n, :second | :minute | :hour | :day},
      max_bytes: n, interval_ms: 60_000]`: older events (or the oldest, while
      the store holds more than `max_bytes` of live data) are deleted in the
      background with range deletes and compaction; indexes and links that
      pointed at them go with them
    * `:persist` — `:always` (default: every event is written) or
      `{:on_trigger, opts}`: the flight recorder, which keeps a sliding
      window in memory and writes it only when a trigger fires (an abnormal
      exit, an `error` event, a slow call, a long queue wait, a `:telemetry`
      event, `snapshot/2`); see `Causeway.Flight` for its options and
      `incidents/1` for what it wrote

  Every option is checked before anything starts: an unknown option, a
  value of the wrong type or out of its range is an `ArgumentError` that
  names the option and what it allows.

  Functions that take an instance `name` act only on a Causeway instance: a
  name registered to any other process is `{:error, %Causeway.Error{kind:
  :not_running}}` (or that error raised, for `metrics/1`, `health/1` and
  `capture/3`), and nothing is sent to that process.

  ## Queries

  Every query runs on a dirty scheduler and returns `Causeway.Event` structs (or
  trees of them). They take an optional `:store` (from `open/2`) or
  `:instance` (a running instance's name, default `Causeway`). Times (`:since`,
  `:until`, `state_at/2`) are `DateTime`s, `NaiveDateTime`s (UTC), `Time`s (today,
  UTC) or integers in `System.monotonic_time(:nanosecond)` of this VM.
  """

  alias Causeway.{Event, Instance, Native}

  @typedoc "A store opened with `open/2`."
  @type store :: Causeway.Store.t()

  # ------------------------------------------------------------------ lifecycle

  @doc "Starts a Causeway instance (see the module doc for options)."
  @spec start_link(keyword()) :: {:ok, pid()} | {:error, Causeway.Error.t() | term()}
  def start_link(opts \\ []), do: Instance.start_link(opts)

  @doc "A child spec, to run Causeway in your own supervision tree."
  @spec child_spec(keyword()) :: Supervisor.child_spec()
  def child_spec(opts) do
    # validated here, so a bad option fails where the tree is built
    {name, _native} = Causeway.Options.start!(opts)

    %{
      id: name,
      start: {__MODULE__, :start_link, [opts]},
      type: :worker,
      shutdown: 30_000
    }
  end

  @doc """
  Stops an instance, draining and persisting what it has buffered. `:ok`
  also when no instance of that name is running; a name registered to a
  process that is not a Causeway instance is `{:error, %Causeway.Error{}}`,
  and that process is left alone.
  """
  @spec stop(atom()) :: :ok | {:error, Causeway.Error.t()}
  def stop(name \\ Causeway) do
    case Instance.whereis(name) do
      {:ok, pid} ->
        try do
          GenServer.stop(pid, :normal, :infinity)
        catch
          :exit, {:noproc, _} -> :ok
        end

      {:error, _} = e ->
        if Process.whereis(name), do: e, else: :ok
    end
  end

  @doc """
  Returns once every event captured before the call is durable: written to
  RocksDB and the write-ahead log synced (or counted as dropped).
  """
  @spec flush(atom(), timeout()) :: :ok | {:error, Causeway.Error.t()}
  def flush(name \\ Causeway, timeout \\ 30_000) do
    unless timeout == :infinity or
             (is_integer(timeout) and timeout >= 0 and timeout <= 0xFFFF_FFFF),
           do:
             raise(
               ArgumentError,
               "flush/2 expects a timeout in milliseconds (0..4294967295) or :infinity, got: #{inspect(timeout)}"
             )

    with {:ok, pid} <- Instance.whereis(name) do
      GenServer.call(pid, :flush, timeout)
    end
  catch
    :exit, {:noproc, _} ->
      {:error,
       %Causeway.Error{kind: :not_running, message: "no Causeway instance #{inspect(name)}"}}

    :exit, {:timeout, _} ->
      {:error,
       %Causeway.Error{kind: :timeout, message: "flush did not complete in #{timeout} ms"}}

    :exit, {reason, {GenServer, :call, _}} ->
      # the instance stopped while the flush was queued
      {:error,
       %Causeway.Error{
         kind: :closed,
         message: "Causeway instance #{inspect(name)} stopped (#{inspect(reason)})"
       }}
  end

  @doc """
  Changes settings of a running instance: `:batch_size`, `:flush_interval_ms`,
  `:workers`, `:max_term_bytes`, `:max_depth`, `:emergency_sample`,
  `:correlation_ttl_ms`, `:memory_budget`.
  """
  @spec configure(keyword(), atom()) :: :ok | {:error, Causeway.Error.t()}
  def configure(opts, name \\ Causeway) do
    update = Causeway.Options.configure!(opts)

    with {:ok, h} <- instance_handle(name) do
      case Native.pipeline_configure(h, update) do
        :ok -> :ok
        {:error, e} -> {:error, Causeway.Error.from_native(e)}
      end
    end
  end

  defp instance_handle(name) do
    {:ok, Instance.handle!(name)}
  rescue
    e in Causeway.Error -> {:error, e}
  end

  @doc """
  Applies the instance's `:retention` policy now (it also runs every
  `interval_ms`); returns what was deleted. The pass runs in bounded
  chunks on a native thread of its own, as the background one does: it
  holds no scheduler, dirty ones included, however much it deletes; the
  caller waits for its answer.
  """
  @spec enforce_retention(atom()) ::
          {:ok, %{events: non_neg_integer(), chunks: non_neg_integer()}}
          | {:error, Causeway.Error.t()}
  def enforce_retention(name \\ Causeway) do
    with {:ok, h} <- instance_handle(name) do
      # the pass runs on a native thread of its own; this process waits
      # for its answer (holding no scheduler)
      token = System.unique_integer([:positive])

      with :ok <- Native.pipeline_retention(h, self(), token) do
        receive do
          {:causeway_native, :retention, ^token, {:ok, stats}} ->
            {:ok, stats}

          {:causeway_native, :retention, ^token, {:error, e}} ->
            {:error, Causeway.Error.from_native(e)}
        end
      else
        {:error, e} -> {:error, Causeway.Error.from_native(e)}
      end
    end
  end

  @doc """
  Switches capture on or off: for everything (`:global`), one module
  (`{:module, m}`) or one process (`{:pid, p}`). When off, capture costs a flag check.
  """
  @spec capture(:global | {:module, module()} | {:pid, pid()}, boolean(), atom()) :: :ok
  def capture(scope, on?, name \\ Causeway)

  def capture(scope, on?, name) when is_boolean(on?) do
    case scope do
      :global ->
        :ok

      {:module, m} when is_atom(m) ->
        :ok

      {:pid, p} when is_pid(p) and node(p) == node() ->
        :ok

      other ->
        raise ArgumentError,
              "capture/2 expects a scope: :global, {:module, m} or {:pid, local_pid}, got: #{inspect(other, limit: 5)}"
    end

    case Native.rt_set_capture(Instance.handle!(name), scope, on?) do
      :ok -> :ok
      {:error, e} -> raise Causeway.Error.from_native(e)
    end
  end

  def capture(_scope, on?, _name),
    do: raise(ArgumentError, "capture/2 expects true or false, got: #{inspect(on?)}")

  @doc """
  Persists the flight recorder's window now (an instance started with
  `persist: {:on_trigger, opts}`, see `Causeway.Flight`), as an incident
  whose trigger is `:snapshot` and whose `detail` is `reason` (a string, or
  any term, inspected). What is captured in the next `after_ms` is written
  too. An instance that persists everything gives `{:error, %Causeway.Error{kind:
  :invalid_argument}}`.
  """
  @spec snapshot(term(), atom()) :: {:ok, Causeway.Incident.t()} | {:error, Causeway.Error.t()}
  def snapshot(reason, name \\ Causeway), do: Causeway.Flight.snapshot(reason, name)

  @doc """
  The flight recorder's incidents in a store, oldest first (`%Causeway.Incident{}`).
  Takes `:instance` (default `Causeway`) or `:store` (from `open/2`, so the
  incidents of a stopped node can be read).
  """
  @spec incidents(keyword()) :: [Causeway.Incident.t()]
  def incidents(opts \\ []), do: Causeway.Flight.incidents(opts)

  @doc """
  Subscribes the caller to `:backpressure` (`{:causeway, :backpressure, level, info}`
  on every level change), `:health` (`{:causeway, :health, what, info}` when a
  writer panics or storage fails) or `:incident` (`{:causeway, :incident,
  %Causeway.Incident{}}` when the flight recorder persists one, see
  `Causeway.Flight`).
  """
  @spec subscribe(:backpressure | :health | :incident, atom()) ::
          :ok | {:error, Causeway.Error.t()}
  def subscribe(topic, name \\ Causeway)

  def subscribe(topic, name), do: subscription(:subscribe, topic, name)

  @doc "Undoes `subscribe/2`."
  @spec unsubscribe(:backpressure | :health | :incident, atom()) ::
          :ok | {:error, Causeway.Error.t()}
  def unsubscribe(topic, name \\ Causeway), do: subscription(:unsubscribe, topic, name)

  defp subscription(op, topic, name) do
    unless topic in [:backpressure, :health, :incident],
      do:
        raise(
          ArgumentError,
          "#{op}/2 expects :backpressure, :health or :incident, got: #{inspect(topic)}"
        )

    with {:ok, pid} <- Instance.whereis(name) do
      GenServer.call(pid, {op, topic, self()})
    end
  catch
    :exit, {reason, {GenServer, :call, _}} ->
      {:error,
       %Causeway.Error{
         kind: :not_running,
         message: "Causeway instance #{inspect(name)} stopped (#{inspect(reason, limit: 5)})"
       }}
  end

  @doc """
  Every figure of the dashboard: throughput (`events_per_s`, `batches_per_s`,
  `correlations_per_s`), capture→persisted `latency` (p50/p95/p99 in µs), `rings`
  (utilization, written, read, dropped per shard), `dropped` by reason, `workers`
  and `worker_load`, `queue_depth`, `correlation_success_rate`,
  `missing_correlations`, `orphaned_events`, `native_memory`, `storage_bytes`,
  `storage_memory` (RocksDB's block cache, memtables and table readers),
  `heap` (the process's C heap, process-wide, sampled every 5 s: `in_use`
  and `free` bytes, and the `trims` that handed `trimmed` bytes of resident
  memory back to the OS; zeros where the allocator is not glibc's), the
  backpressure `level` and its `history`, `sample_every` (one non-critical
  event in this many is kept: 1 unless the level is `:emergency`; see
  `:emergency_sample`), and `alerts`; `flight`
  (`nil` unless `persist: {:on_trigger, ...}`): `window_events` and
  `window_bytes` held now, `expired` (aged out of the window), `evicted`
  (pushed out by its byte cap), `persisted` (written by incidents) and
  `incidents` — with it, `persisted` counts the events the writers took
  (into the window or to disk), and `produced` = `dropped_total` +
  `flight.window_events` + `expired` + `evicted` + `flight.persisted`; and
  `capture_path`: the clock captures read (`:tsc` or `:os`) and whether small
  integers, atoms and lists are read straight from their term words
  (`direct_term_words`) and binaries of up to 64 bytes, floats and tuples
  straight from the process heap (`direct_boxed_terms`), each checked when
  the native library loads.
  """
  @spec metrics(atom() | keyword()) :: map()
  def metrics(name_or_opts \\ Causeway)

  def metrics(opts) when is_list(opts) do
    if cluster?(opts),
      do: opts |> Causeway.Cluster.metrics() |> Causeway.Cluster.unwrap!(),
      else: metrics(Keyword.get(opts, :instance, Causeway))
  end

  def metrics(name) do
    case Native.pipeline_metrics(Instance.handle!(name)) do
      %{} = m -> Map.put(m, :capture_path, Native.native_info())
      {:error, e} -> raise Causeway.Error.from_native(e)
    end
  end

  @doc """
  `%{status: :ok | :degraded | :failing, level: ..., alerts: [...], ...}`:
  `:failing` when writes fail, `:degraded` under emergency backpressure or with
  any alert.
  """
  @spec health(atom()) :: map()
  def health(name \\ Causeway) do
    m = metrics(name)

    status =
      cond do
        Enum.any?(m.alerts, fn {k, _} -> k == :storage end) -> :failing
        m.level == :emergency or m.alerts != [] -> :degraded
        true -> :ok
      end

    %{
      status: status,
      level: m.level,
      alerts: m.alerts,
      workers: m.workers,
      write_errors: m.write_errors,
      worker_panics: m.worker_panics,
      dropped_total: m.dropped_total,
      queue_depth: m.queue_depth,
      uptime_ms: m.uptime_ms
    }
  end

  @doc """
  Opens a store directory for queries. With `read_only: true` (the default) it
  can be another node's store or one whose system has stopped; pass the result
  as `store:` to any query.

  `atoms:` says what becomes of names the store holds that are not atoms in
  this VM (modules, functions, map keys, atoms inside captured terms, as a
  store written by another application has): `:safe` (the default) gives
  them back as binaries (`"Elixir.Decimal"`, `"coef"`) and creates no atom;
  `:create` makes them real atoms, so foreign structs decode as structs — at
  most `:atom_limit` (default 100 000, 1..1 000 000) per opened store. Past
  the limit the names come back as binaries and the store's next query fails
  with a `Causeway.Error` (`:invalid_argument`) that says so: the VM's atom
  table is never exhausted by a store.
  """
  @spec open(Path.t(), keyword()) :: {:ok, store()} | {:error, Causeway.Error.t()}
  def open(dir_or_dirs, opts \\ [])

  def open([first | _] = dirs, opts) when is_binary(first) do
    unless Causeway.Options.list_of?(dirs, &is_binary/1),
      do:
        raise(
          ArgumentError,
          "open/2 expects a directory or a list of directories, got: #{inspect(dirs, limit: 5)}"
        )

    opened = Enum.map(dirs, &{&1, open(&1, opts)})

    case Enum.find(opened, &match?({_, {:error, _}}, &1)) do
      nil ->
        {:ok, %Causeway.Stores{stores: Enum.map(opened, fn {_, {:ok, s}} -> s end)}}

      {bad, {:error, e}} ->
        for {_, {:ok, s}} <- opened, do: close(s)
        {:error, %{e | message: "#{bad}: #{e.message}"}}
    end
  end

  def open(dir, opts) do
    opts =
      Causeway.Options.keyword!(
        opts,
        [read_only: true, atoms: :safe, atom_limit: 100_000],
        "Causeway.open/2"
      )

    unless is_boolean(opts[:read_only]),
      do:
        raise(
          ArgumentError,
          ":read_only must be true or false, got: #{inspect(opts[:read_only])}"
        )

    atom_limit =
      case opts[:atoms] do
        :safe ->
          0

        :create ->
          Causeway.Options.int!(opts[:atom_limit], :atom_limit, 1..1_000_000)

        other ->
          raise ArgumentError, ":atoms must be :safe or :create, got: #{inspect(other)}"
      end

    dir = Causeway.Options.path!(dir, "Causeway.open/2")

    case Native.store_open(Path.expand(dir), opts[:read_only], atom_limit) do
      {:ok, h} ->
        {:ok, %Causeway.Store{handle: h, dir: Path.expand(dir), read_only: opts[:read_only]}}

      {:error, e} ->
        {:error, Causeway.Error.from_native(e)}
    end
  end

  @doc "Closes a store opened with `open/2` (queries on it then fail with `:closed`)."
  @spec close(store() | Causeway.Stores.t()) :: :ok
  def close(%Causeway.Stores{stores: stores}), do: Enum.each(stores, &close/1)

  def close(%Causeway.Store{handle: h}) when is_reference(h) do
    case Native.store_close(h) do
      :ok -> :ok
      {:error, e} -> raise Causeway.Error.from_native(e)
    end
  end

  def close(other),
    do: raise(ArgumentError, "close/1 expects a store from open/2, got: #{inspect(other)}")

  @doc """
  Makes a read-only store from `open/2` see what its writer has written
  since it was opened (a read-only store sees only what existed when it
  opened): the directory is opened again, with the same checks as `open/2`,
  and queries that already run finish on the old view. `:ok` at once for a
  writable store.
  """
  @spec refresh(store()) :: :ok | {:error, Causeway.Error.t()}
  def refresh(%Causeway.Store{handle: h}) do
    case Native.store_refresh(h) do
      :ok -> :ok
      {:error, e} -> {:error, Causeway.Error.from_native(e)}
    end
  end

  def refresh(other),
    do: raise(ArgumentError, "refresh/1 expects a store from open/2, got: #{inspect(other)}")

  # ------------------------------------------------------------------ tracing

  @doc """
  Traces unmodified code (a module, `{m, f, arity}`, a pid, pids, `:all` or
  `:new`) into the same store, with safety limits; see `Causeway.Tracer`.
  With `nodes: :all | [node()]`, one session starts on each connected node,
  recording into that node's instance with the same options (limits count
  per node): a `Causeway.Cluster.Trace`, stopped as a whole by
  `stop_trace/1`.

  With `start_on: trigger` the session is armed and records nothing until
  the trigger fires; then it follows the process it fired in and every
  process a followed one sends a message to or spawns, up to `max_hops:`
  (default 2; 0 = only that process) away and `max_followed:` (default
  100) processes, for `follow_ms:` (default 5 000) after the trigger
  (`duration_ms:` still bounds the whole session, armed or not, and
  `max_events` and the other limits apply). The target then names what is
  recorded in the followed processes: a module or `{m, f, arity}` (by
  default with their sends, receives and spawns), or `:all` (messages and
  spawns; `functions:` for calls). Triggers: `{:call, {m, f, arity | :_}}`
  (optionally `args: [...]` or `match_spec: [...]`), `{:telemetry,
  event_name}` (optionally `filter: fn measurements, metadata -> bool
  end`; only when `:telemetry` is loaded) and `:manual` (`fire_trace/2`);
  see `Causeway.Tracer.Trigger`. The owner gets `{:causeway_trace,
  session, {:triggered, pid}}` when it fires; `trace_info/1` tells which
  processes are followed at which hop, and how many were not (`refused`:
  the cap was reached; `beyond_hops`).

      {:ok, s} = Causeway.trace(MyApp.Billing,
                   start_on: {:call, {MyApp.Api, :checkout, 2}, args: [:_, %{vip: true}]},
                   max_hops: 2, follow_ms: 10_000)
  """
  @spec trace(module() | mfa() | pid() | [pid()] | :all | :new, keyword()) ::
          {:ok, Causeway.Tracer.t() | Causeway.Cluster.Trace.t()}
          | {:error, Causeway.Error.t()}
  def trace(target, opts \\ []) do
    if cluster?(opts),
      do: Causeway.Cluster.trace(target, opts),
      else: Causeway.Tracer.start(target, opts)
  end

  @doc """
  Fires a triggered session (`trace/2` with `start_on:`, typically
  `start_on: :manual`) by hand: `pid` (default: the caller) is followed
  from when this returns. `{:error, :already_fired}` once it has fired,
  `{:error, :not_triggered}` for a session without `start_on:`.
  """
  @spec fire_trace(Causeway.Tracer.t(), pid()) :: :ok | {:error, atom()}
  def fire_trace(session, pid \\ self()), do: Causeway.Tracer.fire(session, pid)

  @doc "Stops a trace session, removing every trace flag and pattern it set."
  @spec stop_trace(Causeway.Tracer.t()) :: :ok
  def stop_trace(%Causeway.Cluster.Trace{} = t), do: Causeway.Cluster.stop_trace(t)
  def stop_trace(session), do: Causeway.Tracer.stop(session)

  @doc """
  Watches a running OTP process (a pid, a registered name, `{name, node}`,
  `{:global, name}` or `{:via, module, name}`) through OTP's debug hooks:
  the messages it handles, its replies and its state after each, with no
  recompiling and no trace flags. See `Causeway.Watch` for what is recorded
  and the options (`:max_events`, `:max_rate`, `:duration_ms`,
  `:max_state_bytes`, `:timeout`, `:instance`).
  """
  @spec watch(pid() | atom() | {atom(), node()} | {:via, module(), term()}, keyword()) ::
          {:ok, Causeway.Watch.t()} | {:error, Causeway.Error.t()}
  def watch(target, opts \\ []), do: Causeway.Watch.start(target, opts)

  @doc "Removes a watch's hook from its process (`:ok` also when it is already gone)."
  @spec unwatch(Causeway.Watch.t()) :: :ok
  def unwatch(watch), do: Causeway.Watch.stop(watch)

  @doc "A session's state: `%{running: bool, events: n, stopped: bool, reason: ...}`."
  @spec trace_info(Causeway.Tracer.t()) :: map()
  def trace_info(%Causeway.Cluster.Trace{} = t), do: Causeway.Cluster.trace_info(t)
  def trace_info(session), do: Causeway.Tracer.info(session)

  # ------------------------------------------------------------------ queries

  @doc """
  Events matching every given filter: `:pid`, `:type` (an atom or a list),
  `:module`, `:function`, `:arity`, `:call_id`, `:since`, `:until`; `:limit`
  (default 1000, `:infinity` for all), `:order` (`:asc` or `:desc`), `:after`
  (continue after an event id), `:links` (include causal links, default true),
  `:incident` (a flight recorder incident's id: only what it wrote, see
  `incidents/1`; `state_history/2` and `stream_events/1` take it too).
  Served from the index that fits the filters.

  With `test: "test name" | {TestModule, name}`, the events recorded while
  that test ran in a suite recorded by `Causeway.ExUnit` (see its
  `events/2` for what a test's events are today).

  With `nodes: :all | [node()]` (and `:timeout`, default 5 000 ms) the query
  runs on every named, connected node's instance and the answers are merged
  by corrected wall time, each event keeping its `node`; nodes that do not
  answer in time are logged. `Causeway.Cluster.events/1` returns them
  instead: `{:ok, events, %{missing: [{node, reason}], offsets: ...}}`.
  `state_history/2`, `message_flow/3`, `stream_events/1`, `causal_chain/2`
  (which follows causes from node to node) and `metrics/1` take `nodes:`
  too; `event/2`, `call_tree/2` and `state_at/3` with `nodes:`
  answer from the first node (in the order given, this node first for
  `:all`) that has the id or the pid's state: ids are unique per node, so
  pass `nodes: [event.node]` to ask about one event (events carry their
  `node`); a pid names its node, so `nodes: [node(pid)]`.
  """
  @spec events(keyword()) :: [Event.t()]
  def events(opts \\ [])

  def events(opts) do
    cond do
      test?(opts) -> test_events(opts)
      stores?(opts) -> Causeway.Cluster.stores_events(opts[:store], opts)
      cluster?(opts) -> opts |> Causeway.Cluster.events() |> Causeway.Cluster.unwrap!()
      true -> opts |> Causeway.Query.events_page() |> elem(0)
    end
  end

  defp test?(opts), do: is_list(opts) and Keyword.keyword?(opts) and Keyword.has_key?(opts, :test)

  # the window Causeway.ExUnit saved for a test
  defp test_events(opts) do
    {test, rest} = Keyword.pop(opts, :test)

    case Causeway.ExUnit.events(test, rest) do
      {:ok, events} ->
        events

      {:error, reason} ->
        raise Causeway.Error,
          kind: :not_found,
          message: "no recorded window for test #{inspect(test)} (#{reason})"
    end
  end

  # a query on stores opened together (post-mortem of a cluster)
  defp stores?(opts),
    do: is_list(opts) and Keyword.keyword?(opts) and match?(%Causeway.Stores{}, opts[:store])

  # a query with :nodes goes to Causeway.Cluster
  defp cluster?(opts),
    do: is_list(opts) and Keyword.keyword?(opts) and Keyword.has_key?(opts, :nodes)

  @doc """
  Like `events/1`, as a lazy `Stream` that reads pages of `:page_size`
  (500); `:limit` defaults to `:infinity`. With `nodes:` (or `store:` a
  `Causeway.Stores`), the nodes' pages are merged by corrected wall time as
  they are read: each node's first page is read when the stream is made
  (nodes that do not give it are logged), and its next one only when the
  events it gave are all merged out; a node lost midway ends its part with
  a warning. `Causeway.Cluster.stream_events/1` returns the missing nodes
  instead. See `Causeway.Cluster.Stream`.
  """
  @spec stream_events(keyword()) :: Enumerable.t()
  def stream_events(opts \\ []) do
    if cluster?(opts) or stores?(opts),
      do: opts |> Causeway.Cluster.stream_events() |> Causeway.Cluster.unwrap!(),
      else: Causeway.Query.stream(opts)
  end

  @doc "The event with this id, or `nil`."
  @spec event(non_neg_integer(), keyword()) :: Event.t() | nil
  def event(id, opts \\ []) do
    if cluster?(opts),
      do: Causeway.Cluster.first(:event, [id], opts),
      else: Causeway.Query.event(id, opts)
  end

  @doc """
  A call id → `%Causeway.CallTree{}` (the call with its exit, duration and
  nested calls); a pid → the list of its top-level call trees. `:max_nodes`
  (default 10 000, or `:infinity`) caps the calls expanded; reading stops there.
  """
  @spec call_tree(non_neg_integer() | pid(), keyword()) ::
          Causeway.CallTree.t() | [Causeway.CallTree.t()]
  def call_tree(call_id_or_pid, opts \\ []) do
    if cluster?(opts),
      do: Causeway.Cluster.first(:call_tree, [call_id_or_pid], opts),
      else: Causeway.Query.call_tree(call_id_or_pid, opts)
  end

  @doc """
  From an event back to its root cause, across processes: `[{event, link}]`
  where `link` says how the event led to the one before it (`nil` for the first).
  `:max` (default 1000, or `:infinity`) caps its length.

  With `nodes: :all | [node()]` (or `store:` a `Causeway.Stores`) it also
  crosses nodes: it starts on the first node that has the id, and where
  that node's part stops at a receive of a message sent from another node
  it goes on from the send there (`:receives`; a `GenServer.call`'s
  request pairs with its `handle_call/3` receive, first in first out), and
  where a process has no cause left, from its spawn recorded by a parent
  on another node (`:spawned_by`). Missing nodes are logged;
  `Causeway.Cluster.causal_chain/2` returns them. See
  `Causeway.Cluster.Chain`.
  """
  @spec causal_chain(non_neg_integer(), keyword()) :: [{Event.t(), atom() | nil}]
  def causal_chain(event_id, opts \\ []) do
    if cluster?(opts) or stores?(opts),
      do: event_id |> Causeway.Cluster.causal_chain(opts) |> Causeway.Cluster.unwrap!(),
      else: Causeway.Query.causal_chain(event_id, opts)
  end

  @doc """
  Messages between two processes, each send with its matched receive (or
  `nil`), oldest first. `:limit` (a positive integer or `:infinity`, the
  default) stops reading once that many are found.
  """
  @spec message_flow(pid(), pid(), keyword()) :: [%{send: Event.t(), receive: Event.t() | nil}]
  def message_flow(a, b, opts \\ []) do
    cond do
      stores?(opts) -> Causeway.Cluster.stores_message_flow(opts[:store], a, b, opts)
      true -> message_flow_of(a, b, opts)
    end
  end

  defp message_flow_of(a, b, opts) do
    if cluster?(opts),
      do: a |> Causeway.Cluster.message_flow(b, opts) |> Causeway.Cluster.unwrap!(),
      else: Causeway.Query.message_flow(a, b, opts)
  end

  @doc """
  A process's state changes, oldest first. `:since` / `:until` (as in
  `events/1`) bound the time; `:limit` (positive integer or `:infinity`, the
  default) stops reading once that many are found.
  """
  @spec state_history(pid(), keyword()) :: [Event.t()]
  def state_history(pid, opts \\ []) do
    cond do
      stores?(opts) -> Causeway.Cluster.stores_state_history(opts[:store], pid, opts)
      true -> state_history_of(pid, opts)
    end
  end

  defp state_history_of(pid, opts) do
    if cluster?(opts),
      do: pid |> Causeway.Cluster.state_history(opts) |> Causeway.Cluster.unwrap!(),
      else: Causeway.Query.state_history(pid, opts)
  end

  @doc """
  Time travel: the state `pid` had at `time` (the new state of its last state
  change at or before it), as `{:ok, state, event}`, or `:none` if it had no
  recorded state yet.
  """
  @spec state_at(pid(), DateTime.t() | NaiveDateTime.t() | Time.t() | integer(), keyword()) ::
          {:ok, term(), Event.t()} | :none
  def state_at(pid, time, opts \\ []) do
    if cluster?(opts),
      do: Causeway.Cluster.first(:state_at, [pid, time], opts),
      else: Causeway.Query.state_at(pid, time, opts)
  end

  @doc """
  The structural difference of a `state_change` event (old state → new):
  keys and struct fields added, removed or changed, recursively; lists and
  tuples by position. See `Causeway.StateDiff`.
  """
  @spec state_diff(Event.t()) :: Causeway.StateDiff.t()
  def state_diff(%Event{type: :state_change, data: %{old: old, new: new}}),
    do: Causeway.StateDiff.diff(old, new)

  def state_diff(other),
    do:
      raise(
        ArgumentError,
        "state_diff/1 expects a state_change event, got: #{inspect(other, limit: 5)}"
      )

  @doc """
  "Which message changed this": every state change of `pid` in which the
  value at `path` (map keys, struct fields, keyword keys, list and tuple
  indexes — see `Causeway.StateDiff.at/2`) changed, oldest first, as
  `%{event: state_change, old: value | :none, new: value | :none, cause:
  event | nil}`, where `cause` is the message (or call) that caused it and
  `:none` means the path did not exist. Takes the options of
  `state_history/2` (`:since`, `:until`, `:limit`, `:store`, `:instance`).
  """
  @spec changes(pid(), [term()], keyword()) :: [map()]
  def changes(pid, path, opts \\ [])

  def changes(pid, path, opts) when is_pid(pid) and is_list(path) do
    unless Causeway.Options.list_of?(path, fn _ -> true end),
      do: raise(ArgumentError, "changes/3 expects a path list, got: #{inspect(path, limit: 5)}")

    target = Keyword.take(opts, [:store, :instance])

    pid
    |> state_history(opts)
    |> Enum.flat_map(fn e ->
      old = value_at(e.data.old, path)
      new = value_at(e.data.new, path)

      if old === new do
        []
      else
        cause = if e.parent_id, do: event(e.parent_id, target)
        [%{event: e, old: old, new: new, cause: cause}]
      end
    end)
  end

  def changes(pid, path, _opts),
    do:
      raise(
        ArgumentError,
        "changes/3 expects a pid and a path list, got: #{inspect(pid, limit: 5)}, #{inspect(path, limit: 5)}"
      )

  defp value_at(term, path) do
    case Causeway.StateDiff.at(term, path) do
      {:ok, v} -> v
      :error -> :none
    end
  end

  @doc """
  The process tree recorded under `pid`: `%{pid: pid, spawned: event | nil,
  exit: event | nil, children: [tree]}` from `process_spawn` events (the parent
  spawned the child) and `process_exit` events. `:max_depth` (default 32)
  bounds the walk. With `nodes:`, each process's spawns and exit are looked
  up on every node named, so a child spawned on another node
  (`Node.spawn/2`, recorded by its parent) is followed there.
  """
  @spec process_tree(pid(), keyword()) :: map()
  def process_tree(pid, opts \\ [])

  def process_tree(pid, opts) when is_pid(pid) do
    opts =
      Causeway.Options.keyword!(
        opts,
        [:max_depth, :store, :instance, :nodes, :timeout],
        "Causeway.process_tree/2"
      )

    {max_depth, query} = Keyword.pop(opts, :max_depth, 32)
    max_depth = Causeway.Options.int!(max_depth, :max_depth, 0..10_000)

    process_tree(pid, nil, max_depth, query)
  end

  def process_tree(pid, _opts),
    do: raise(ArgumentError, "process_tree/1 expects a pid, got: #{inspect(pid)}")

  defp process_tree(pid, spawned, depth, query) do
    exit = List.first(events(Keyword.merge(query, pid: pid, type: :process_exit, limit: 1)))

    children =
      if depth <= 0 do
        []
      else
        for %{data: %{child: child}} = spawn <-
              events(Keyword.merge(query, pid: pid, type: :process_spawn, limit: :infinity)),
            is_pid(child),
            do: process_tree(child, spawn, depth - 1, query)
      end

    %{pid: pid, spawned: spawned, exit: exit, children: children}
  end

  @doc """
  Prints a call tree (or every top-level call of a pid). Takes the options
  of `call_tree/2` and of `Causeway.CallTree.format/2`: `:max_lines`
  (default 1 000 per tree) and `:max_indent` (32; deeper calls show their
  depth instead of moving right), so a 20 000-deep recursion prints at once.
  """
  @spec print_call_tree(non_neg_integer() | pid(), keyword()) :: :ok
  def print_call_tree(root, opts \\ []) do
    opts =
      Causeway.Options.keyword!(
        opts,
        [:max_nodes, :store, :instance, :max_lines, :max_indent],
        "Causeway.print_call_tree/2"
      )

    {format_opts, query_opts} = Keyword.split(opts, [:max_lines, :max_indent])

    case call_tree(root, query_opts) do
      nil ->
        IO.puts("no call #{inspect(root)} recorded")

      trees ->
        trees |> List.wrap() |> Enum.each(&IO.puts(Causeway.CallTree.format(&1, format_opts)))
    end
  end

  @doc "Prints a process's events as a timeline, with times relative to the first."
  @spec print_timeline(pid(), keyword()) :: :ok
  def print_timeline(pid, opts \\ []) do
    IO.puts(Causeway.Query.timeline(pid, opts))
  end
end
