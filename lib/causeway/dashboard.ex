defmodule Causeway.Dashboard do
  @moduledoc """
  Renders `Causeway.metrics/0` as the text dashboard of the seed design
  (throughput, latency, buffer health, worker pool, correlation, resources,
  alerts). `mix causeway.top` refreshes it every second.
  """

  @doc "The dashboard as a string."
  @spec render(map()) :: String.t()
  def render(m) do
    rings = Enum.map_join(m.rings, "  ", fn r -> "##{r.shard} #{pct(r.utilization)}" end)

    drops = Enum.map_join(m.dropped, ", ", fn {k, v} -> "#{k} #{v}" end)

    alerts =
      case m.alerts do
        [] -> "  [ok] all systems normal"
        list -> Enum.map_join(list, "\n", fn {k, msg} -> "  [!] #{k}: #{msg}" end)
      end

    """
    ┌ Causeway ── level #{m.level}#{sampling(m)} ── up #{div(m.uptime_ms, 1000)} s
    │ throughput   #{num(m.events_per_s)} events/s   #{num(m.batches_per_s)} batches/s   #{num(m.correlations_per_s)} correlations/s
    │ latency      p50 #{us(m.latency.p50_us)}   p95 #{us(m.latency.p95_us)}   p99 #{us(m.latency.p99_us)}   (capture → persisted)
    │ rings        #{rings}   queue depth #{m.queue_depth}
    │ events       produced #{m.produced}   persisted #{m.persisted}   dropped #{m.dropped_total} (#{drops})
    │ workers      #{m.workers} running (target #{m.workers_target})   load #{pct(m.worker_load)}   batch #{m.batch_size}   flush #{m.flush_interval_ms} ms
    │ correlation  success #{pct(m.correlation_success_rate)}   links #{m.correlations}   missing #{m.missing_correlations}   orphaned #{m.orphaned_events}   pending #{m.pending_correlations}
    │ resources    native memory #{bytes(m.native_memory)} / #{bytes(m.memory_budget)}   storage #{bytes(m.storage_bytes)}   capture clock #{clock(m)}
    └ alerts
    #{alerts}
    """
  end

  defp sampling(%{sample_every: n}) when is_integer(n) and n > 1,
    do: " (keeping 1 in #{n} non-critical events)"

  defp sampling(_), do: ""

  defp clock(%{capture_path: %{clock: c}}), do: to_string(c)
  defp clock(_), do: "-"

  defp num(x) when is_float(x), do: :erlang.float_to_binary(x, decimals: 0)
  defp num(x), do: to_string(x)
  defp pct(x), do: :erlang.float_to_binary(x * 100.0, decimals: 1) <> "%"
  defp us(0), do: "-"
  defp us(x) when x < 1000, do: "#{x} µs"
  defp us(x), do: :erlang.float_to_binary(x / 1000, decimals: 2) <> " ms"
  defp bytes(b) when b < 1024, do: "#{b} B"
  defp bytes(b) when b < 1024 * 1024, do: :erlang.float_to_binary(b / 1024, decimals: 1) <> " KiB"
  defp bytes(b), do: :erlang.float_to_binary(b / 1024 / 1024, decimals: 1) <> " MiB"
end
