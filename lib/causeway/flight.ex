defmodule Causeway.Flight do
  @moduledoc """
  The flight recorder: an instance started with `persist: {:on_trigger,
  opts}` captures and correlates as usual, but keeps the events in native
  memory for a sliding window only, and writes to disk only when a trigger
  fires. Then the window before the trigger is written (or, with `cone:
  true`, only its causal cone: everything the trigger's links, parents and
  calls reach backwards within the window, across processes, plus every
  event of the trigger's process), and everything captured for `after_ms`
  after it (with a cone, the trigger process's events only). While nothing
  fires, the disk sees no event writes.

  Each trigger makes a `Causeway.Incident` (`Causeway.incidents/1`),
  subscribers of `:incident` get `{:causeway, :incident, incident}`, and
  `Causeway.events(incident: id)` (and every query taking `:since`/`:until`)
  is limited to what it wrote.

  ## Options of `{:on_trigger, opts}`

    * `:window_ms` (30 000, 1..86 400 000) — how far back the window reaches.
    * `:max_bytes` (64 MiB, 1 MiB..16 GiB) — what the window may hold
      (payloads plus ~192 B per event); the oldest batches leave it first,
      counted in `metrics().flight.evicted`. Memory stays under this cap
      whatever the load (the rings' own bounds and drop counts are as for
      `persist: :always`).
    * `:after_ms` (1 000, 0..3 600 000) — what is written after a trigger.
    * `:cone` (false) — keep only the causal cone of the trigger.
    * `:exits` (true) — fire on a process exit whose reason is not
      `:normal`, `:shutdown` or `{:shutdown, _}`.
    * `:errors` (true) — fire on an `error` event.
    * `:slow_call_ms` (off) — fire on a call (entry to exit) at least this slow.
    * `:queue_wait_ms` (off) — fire on a message received at least this long
      after it was sent (both sides recorded).
    * `:telemetry` (`[]`) — `:telemetry` event names (lists of atoms) that
      fire a snapshot; needs `:telemetry` loaded (an `ArgumentError` otherwise).

  `Causeway.snapshot/2` fires one by hand. `flush/1` is still a barrier:
  when it returns, everything captured before it is in the window or, if
  a trigger fired, on disk. On `stop/1` the window is discarded (it was not
  asked for); what incidents wrote stays.
  """

  alias Causeway.{Incident, Instance, Native, Options}

  @defaults [
    window_ms: 30_000,
    max_bytes: 64 * 1024 * 1024,
    after_ms: 1_000,
    cone: false,
    exits: true,
    errors: true,
    slow_call_ms: nil,
    queue_wait_ms: nil,
    telemetry: []
  ]

  @day_ms 86_400_000

  @doc false
  # `persist:` as the native side takes it: nil (:always) or the map.
  def persist!(:always), do: nil

  def persist!({:on_trigger, opts}) do
    o = Options.keyword!(opts, @defaults, "persist: {:on_trigger, opts}")

    for key <- [:cone, :exits, :errors] do
      unless is_boolean(o[key]),
        do: raise(ArgumentError, "#{inspect(key)} must be a boolean, got: #{inspect(o[key])}")
    end

    events = o[:telemetry]

    unless Options.list_of?(events, fn e -> e != [] and Options.list_of?(e, &is_atom/1) end),
      do:
        raise(
          ArgumentError,
          ":telemetry must be a list of event names (non-empty lists of atoms), got: #{inspect(events)}"
        )

    if events != [] and not Code.ensure_loaded?(:telemetry),
      do:
        raise(
          ArgumentError,
          ":telemetry triggers need the :telemetry application, which is not loaded here"
        )

    %{
      window_ms: Options.int!(o[:window_ms], :window_ms, 1..@day_ms),
      max_bytes: Options.int!(o[:max_bytes], :max_bytes, (1024 * 1024)..(16 * 1024 ** 3)),
      after_ms: Options.int!(o[:after_ms], :after_ms, 0..3_600_000),
      cone: o[:cone],
      on_exit: o[:exits],
      on_error: o[:errors],
      slow_call_ms: o[:slow_call_ms] && Options.int!(o[:slow_call_ms], :slow_call_ms, 1..@day_ms),
      queue_wait_ms:
        o[:queue_wait_ms] && Options.int!(o[:queue_wait_ms], :queue_wait_ms, 1..@day_ms),
      telemetry: events
    }
  end

  def persist!(other),
    do:
      raise(
        ArgumentError,
        ":persist must be :always or {:on_trigger, opts}, got: #{inspect(other, limit: 5)}"
      )

  @doc false
  # Persists the window of instance `name` now.
  def snapshot(reason, name, telemetry? \\ false) do
    h = Instance.handle!(name)

    case Native.pipeline_snapshot(h, telemetry?, reason_text(reason)) do
      {:ok, inc} -> {:ok, Incident.from_native(inc)}
      {:error, e} -> {:error, Causeway.Error.from_native(e)}
    end
  end

  defp reason_text(r) when is_binary(r) and byte_size(r) <= 1024, do: r
  defp reason_text(r), do: inspect(r, limit: 20, printable_limit: 1024)

  @doc false
  def incidents(opts) do
    opts = Options.keyword!(opts, [:store, :instance], "Causeway.incidents/1")

    case Native.store_incidents(Causeway.Query.handle(opts)) do
      {:ok, list} -> Enum.map(list, &Incident.from_native/1)
      {:error, e} -> raise Causeway.Error.from_native(e)
    end
  end

  @doc false
  # The incident `id` of the store a query reads, or an ArgumentError.
  def incident!(id, opts) do
    unless is_integer(id) and id > 0,
      do:
        raise(
          ArgumentError,
          ":incident must be an incident id (a positive integer), got: #{inspect(id)}"
        )

    case Enum.find(incidents(Keyword.take(opts, [:store, :instance])), &(&1.id == id)) do
      nil -> raise ArgumentError, "no incident #{id} in this store (see Causeway.incidents/1)"
      inc -> inc
    end
  end

  # ------------------------------------------------------------ telemetry

  @doc false
  # Attaches the instance's :telemetry triggers; returns the handler ids.
  def attach(name, owner, events) do
    for event <- events do
      id = {__MODULE__, name, event}
      # credo:disable-for-next-line
      :ok = apply(:telemetry, :attach, [id, event, &__MODULE__.handle_telemetry/4, owner])
      id
    end
  end

  @doc false
  def detach(ids), do: Enum.each(ids, &apply(:telemetry, :detach, [&1]))

  @doc false
  # Runs in the process that emitted the event: only a message to the
  # instance, which makes the snapshot (a disk write) on its own time.
  def handle_telemetry(event, _measurements, _metadata, owner) do
    send(owner, {:causeway_flight_telemetry, event})
  end
end
