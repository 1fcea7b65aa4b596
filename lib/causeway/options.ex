defmodule Causeway.Options do
  @moduledoc false
  # Validation of Causeway.start_link/1 and Causeway.configure/1 options.

  @start_defaults [
    name: Causeway,
    dir: "_causeway/data",
    ring_size: 65_536,
    shards: nil,
    overflow: :drop_newest,
    workers: {2, 16},
    batch_size: 1_000,
    flush_interval_ms: 5,
    max_term_bytes: 2_048,
    max_depth: 16,
    redact: [],
    correlation_ttl_ms: 300_000,
    max_pending: 250_000,
    max_processes: 1_000_000,
    emergency_sample: 100,
    max_retries: 8,
    retry_base_ms: 10,
    memory_budget: nil,
    sync_writes: false,
    covering_pid_index: true,
    retention: []
  ]

  def start_defaults, do: @start_defaults

  def start!(opts) when is_list(opts) do
    opts = Keyword.validate!(opts, @start_defaults)
    name = opts[:name]

    unless is_atom(name) and not is_nil(name),
      do: raise(ArgumentError, ":name must be an atom, got: #{inspect(name)}")

    dir = opts[:dir]

    unless is_binary(dir) and dir != "",
      do: raise(ArgumentError, ":dir must be a non-empty string, got: #{inspect(dir)}")

    ring = pos_int!(opts, :ring_size)

    unless Bitwise.band(ring, ring - 1) == 0 and ring >= 2,
      do: raise(ArgumentError, ":ring_size must be a power of two >= 2, got: #{ring}")

    shards = opts[:shards] || min(:erlang.system_info(:schedulers), 64)

    unless is_integer(shards) and shards in 1..64,
      do: raise(ArgumentError, ":shards must be an integer in 1..64, got: #{inspect(shards)}")

    unless opts[:overflow] in [:drop_newest, :drop_oldest],
      do:
        raise(
          ArgumentError,
          ":overflow must be :drop_newest or :drop_oldest, got: #{inspect(opts[:overflow])}"
        )

    {wmin, wmax} = workers!(opts[:workers])
    redact = opts[:redact]

    unless is_list(redact) and Enum.all?(redact, &is_atom/1),
      do: raise(ArgumentError, ":redact must be a list of atoms, got: #{inspect(redact)}")

    for key <- [:sync_writes, :covering_pid_index] do
      unless is_boolean(opts[key]),
        do: raise(ArgumentError, "#{inspect(key)} must be a boolean, got: #{inspect(opts[key])}")
    end

    retention = retention!(opts[:retention])

    native = %{
      dir: Path.expand(dir),
      shards: shards,
      ring_size: ring,
      overflow: Atom.to_string(opts[:overflow]),
      workers_min: wmin,
      workers_max: wmax,
      batch_size: pos_int!(opts, :batch_size),
      flush_interval_ms: pos_int!(opts, :flush_interval_ms),
      max_term_bytes: pos_int!(opts, :max_term_bytes),
      max_depth: pos_int!(opts, :max_depth),
      correlation_ttl_ms: pos_int!(opts, :correlation_ttl_ms),
      max_pending: pos_int!(opts, :max_pending),
      max_processes: pos_int!(opts, :max_processes),
      emergency_sample: pos_int!(opts, :emergency_sample),
      max_retries: non_neg_int!(opts, :max_retries),
      retry_base_ms: pos_int!(opts, :retry_base_ms),
      memory_budget: if(opts[:memory_budget], do: pos_int!(opts, :memory_budget), else: 0),
      sync_writes: opts[:sync_writes],
      covering_pid_index: opts[:covering_pid_index],
      redact: redact,
      retention_max_age_ms: retention[:max_age],
      retention_max_bytes: retention[:max_bytes],
      retention_interval_ms: retention[:interval_ms]
    }

    {name, native}
  end

  def start!(other),
    do: raise(ArgumentError, "options must be a keyword list, got: #{inspect(other)}")

  @configurable [
    :batch_size,
    :flush_interval_ms,
    :workers,
    :max_term_bytes,
    :max_depth,
    :emergency_sample,
    :correlation_ttl_ms,
    :memory_budget
  ]

  def configure!(opts) when is_list(opts) do
    opts = Keyword.validate!(opts, Enum.map(@configurable, &{&1, nil}))

    Map.new(@configurable, fn
      :workers ->
        {:workers, if(opts[:workers], do: workers!(opts[:workers]))}

      key ->
        {key, if(opts[key] != nil, do: pos_int!(opts, key))}
    end)
  end

  def configure!(other),
    do: raise(ArgumentError, "options must be a keyword list, got: #{inspect(other)}")

  @units %{millisecond: 1, second: 1_000, minute: 60_000, hour: 3_600_000, day: 86_400_000}

  defp retention!(r) when is_list(r) do
    r = Keyword.validate!(r, max_age: nil, max_bytes: nil, interval_ms: 60_000)

    max_age =
      case r[:max_age] do
        nil ->
          nil

        ms when is_integer(ms) and ms > 0 ->
          ms

        {n, unit} when is_integer(n) and n > 0 and is_map_key(@units, unit) ->
          n * @units[unit]

        other ->
          raise ArgumentError,
                "retention :max_age must be milliseconds or {n, :second | :minute | :hour | :day}, got: #{inspect(other)}"
      end

    max_bytes =
      case r[:max_bytes] do
        nil ->
          nil

        b when is_integer(b) and b > 0 ->
          b

        other ->
          raise ArgumentError,
                "retention :max_bytes must be a positive integer, got: #{inspect(other)}"
      end

    interval = r[:interval_ms]

    unless is_integer(interval) and interval >= 100,
      do:
        raise(
          ArgumentError,
          "retention :interval_ms must be an integer >= 100, got: #{inspect(interval)}"
        )

    [max_age: max_age, max_bytes: max_bytes, interval_ms: interval]
  end

  defp retention!(other),
    do: raise(ArgumentError, ":retention must be a keyword list, got: #{inspect(other)}")

  defp workers!({min, max} = w)
       when is_integer(min) and is_integer(max) and min >= 1 and max <= 16 and min <= max,
       do: w

  defp workers!(n) when is_integer(n) and n in 1..16, do: {n, n}

  defp workers!(other),
    do:
      raise(
        ArgumentError,
        ":workers must be {min, max} with 1 <= min <= max <= 16, got: #{inspect(other)}"
      )

  # bounds the native side relies on (see causeway_core::config::check_term_budget)
  @ranges %{max_depth: 1..1000, max_term_bytes: 64..(64 * 1024 * 1024)}

  defp pos_int!(opts, key) do
    case {opts[key], @ranges[key]} do
      {v, nil} when is_integer(v) and v > 0 ->
        v

      {v, lo..hi} when is_integer(v) and v >= lo and v <= hi ->
        v

      {v, lo..hi} ->
        raise ArgumentError, "#{inspect(key)} must be in #{lo}..#{hi}, got: #{inspect(v)}"

      {v, nil} ->
        raise ArgumentError, "#{inspect(key)} must be a positive integer, got: #{inspect(v)}"
    end
  end

  defp non_neg_int!(opts, key) do
    case opts[key] do
      v when is_integer(v) and v >= 0 ->
        v

      v ->
        raise ArgumentError, "#{inspect(key)} must be a non-negative integer, got: #{inspect(v)}"
    end
  end
end
