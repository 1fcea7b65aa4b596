defmodule Causeway.Options do
  @moduledoc false
  # Validation of Causeway.start_link/1 and Causeway.configure/1 options.

  @year_ms 365 * 86_400_000
  @u64_max 0xFFFF_FFFF_FFFF_FFFF

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
    retention: [],
    persist: :always
  ]

  def start_defaults, do: @start_defaults

  def start!(opts) when is_list(opts) do
    opts = keyword!(opts, @start_defaults, "Causeway.start_link/1")
    name = opts[:name]

    unless is_atom(name) and not is_nil(name),
      do: raise(ArgumentError, ":name must be an atom, got: #{inspect(name)}")

    dir = path!(opts[:dir], "the :dir option")

    ring = pos_int!(opts, :ring_size)

    unless Bitwise.band(ring, ring - 1) == 0,
      do: raise(ArgumentError, ":ring_size must be a power of two in 2..2^24, got: #{ring}")

    shards = opts[:shards] || min(:erlang.system_info(:schedulers), 64)

    unless is_integer(shards) and shards in 1..64,
      do: raise(ArgumentError, ":shards must be an integer in 1..64, got: #{inspect(shards)}")

    unless opts[:overflow] in [:drop_newest, :drop_oldest, :wait],
      do:
        raise(
          ArgumentError,
          ":overflow must be :drop_newest, :drop_oldest or :wait, got: #{inspect(opts[:overflow], limit: 5)}"
        )

    {wmin, wmax} = workers!(opts[:workers])
    redact = opts[:redact]

    unless list_of?(redact, &is_atom/1),
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
      retention_interval_ms: retention[:interval_ms],
      flight: Causeway.Flight.persist!(opts[:persist])
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
    opts = keyword!(opts, Enum.map(@configurable, &{&1, nil}), "Causeway.configure/2")

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

  @max_age_ms 1000 * 365 * 86_400_000
  @max_bytes 0x3FFF_FFFF_FFFF_FFFF

  defp retention!(r) when is_list(r) do
    r = keyword!(r, [max_age: nil, max_bytes: nil, interval_ms: 60_000], ":retention")

    max_age =
      case r[:max_age] do
        nil ->
          nil

        ms when is_integer(ms) and ms > 0 and ms <= @max_age_ms ->
          ms

        {n, unit}
        when is_integer(n) and n > 0 and is_map_key(@units, unit) and
               n * :erlang.map_get(unit, @units) <= @max_age_ms ->
          n * @units[unit]

        other ->
          raise ArgumentError,
                "retention :max_age must be milliseconds in 1..#{@max_age_ms} (1000 years) or {n, :second | :minute | :hour | :day} within it, got: #{inspect(other)}"
      end

    max_bytes =
      case r[:max_bytes] do
        nil ->
          nil

        b when is_integer(b) and b > 0 and b <= @max_bytes ->
          b

        other ->
          raise ArgumentError,
                "retention :max_bytes must be an integer in 1..#{@max_bytes}, got: #{inspect(other)}"
      end

    interval = r[:interval_ms]

    unless is_integer(interval) and interval >= 100 and interval <= @year_ms,
      do:
        raise(
          ArgumentError,
          "retention :interval_ms must be an integer in 100..#{@year_ms}, got: #{inspect(interval)}"
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

  # The allowed range of every integer option (what the native side can hold
  # and what is sane); documented in Causeway's moduledoc.
  @ranges %{
    ring_size: 2..16_777_216,
    batch_size: 1..1_000_000,
    flush_interval_ms: 1..60_000,
    max_term_bytes: 64..(64 * 1024 * 1024),
    max_depth: 1..1000,
    correlation_ttl_ms: 1..@year_ms,
    max_pending: 1..1_000_000_000,
    max_processes: 1..100_000_000,
    emergency_sample: 1..1_000_000,
    max_retries: 0..1_000,
    retry_base_ms: 1..60_000,
    memory_budget: 1..17_592_186_044_416
  }

  @doc false
  def ranges, do: @ranges

  defp pos_int!(opts, key), do: int!(opts[key], key, @ranges[key] || 1..@u64_max)

  @doc false
  # An integer option in `lo..hi`, or an ArgumentError naming it and its range.
  def int!(v, key, lo..hi) do
    if is_integer(v) and v >= lo and v <= hi,
      do: v,
      else:
        raise(
          ArgumentError,
          "#{inspect(key)} must be an integer in #{lo}..#{hi}, got: #{inspect(v)}"
        )
  end

  @doc false
  # A proper list whose every element passes `pred` (an improper list is
  # not one: Enum.all?/2 would raise on it).
  def list_of?([x | rest], pred), do: pred.(x) and list_of?(rest, pred)
  def list_of?([], _pred), do: true
  def list_of?(_, _pred), do: false

  @doc false
  # A path argument: a non-empty string (or printable charlist) with no NUL.
  def path!(path, fun) do
    ok =
      (is_binary(path) and path != "" and String.valid?(path) and
         not String.contains?(path, <<0>>)) or
        (is_list(path) and path != [] and List.ascii_printable?(path))

    if ok,
      do: path,
      else:
        raise(
          ArgumentError,
          "#{fun} expects a path (a non-empty string), got: #{inspect(path, limit: 5)}"
        )
  end

  @doc false
  # Options of a public function: a keyword list with only the `allowed` keys
  # (a list of keys or of {key, default}); anything else is an ArgumentError
  # that names the function and the offending option.
  def keyword!(opts, allowed, fun) do
    unless is_list(opts) and Keyword.keyword?(opts),
      do: raise(ArgumentError, "#{fun} expects a keyword list of options, got: #{inspect(opts)}")

    keys =
      Enum.map(allowed, fn
        {k, _} -> k
        k -> k
      end)

    case Enum.reject(Keyword.keys(opts), &(&1 in keys)) do
      [] ->
        Keyword.validate!(opts, allowed)

      unknown ->
        raise ArgumentError,
              "unknown option#{if length(unknown) > 1, do: "s"} #{Enum.map_join(Enum.uniq(unknown), ", ", &inspect/1)} " <>
                "for #{fun}; expected one of #{inspect(keys)}"
    end
  end

  defp non_neg_int!(opts, key), do: int!(opts[key], key, @ranges[key] || 0..@u64_max)
end
