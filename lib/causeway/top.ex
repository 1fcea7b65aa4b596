defmodule Causeway.Top do
  @moduledoc """
  A live terminal dashboard: `Causeway.Dashboard.render/1` of an instance's
  metrics, redrawn every second until stopped. `mix causeway.top` runs it; from
  IEx, `Causeway.Top.run(count: 10)`.

  Options: `:instance` (default `Causeway`), `:node` (read the metrics of an
  instance on another connected node), `:interval_ms` (1000), `:count` (stop
  after that many frames; default: never), `:clear` (redraw in place with ANSI
  escapes, default true), `:cluster` (one row per connected node running
  Causeway, and cluster totals, from `Causeway.metrics(nodes: :all)`; the
  node is the one given by `:node`, or this one).

  Each frame also emits `[:causeway, :metrics]` through `:telemetry` when it is
  loaded (measurements: the numeric figures).
  """

  @doc "Runs the dashboard loop; returns `:ok` after `:count` frames."
  @spec run(keyword()) :: :ok
  def run(opts \\ []) do
    opts =
      Keyword.validate!(opts,
        instance: Causeway,
        node: nil,
        interval_ms: 1_000,
        count: :infinity,
        clear: true,
        cluster: false
      )

    loop(opts, opts[:count])
  end

  defp loop(_opts, 0), do: :ok

  defp loop(opts, left) do
    frame = frame(opts)
    if opts[:clear], do: IO.write([IO.ANSI.home(), IO.ANSI.clear()])
    IO.write(frame)
    Process.sleep(opts[:interval_ms])
    loop(opts, if(left == :infinity, do: :infinity, else: left - 1))
  end

  @doc "One frame of the dashboard as text (and the telemetry event)."
  @spec frame(keyword()) :: String.t()
  def frame(opts \\ []) do
    instance = Keyword.get(opts, :instance, Causeway)

    result =
      case {Keyword.get(opts, :node), Keyword.get(opts, :cluster, false)} do
        {nil, false} ->
          safe(fn -> Causeway.metrics(instance) end)

        {node, false} ->
          safe(fn -> :erpc.call(node, Causeway, :metrics, [instance], 5_000) end)

        {nil, true} ->
          safe(fn -> {:cluster, Causeway.Cluster.metrics(nodes: :all, instance: instance)} end)

        {node, true} ->
          safe(fn ->
            {:cluster,
             :erpc.call(
               node,
               Causeway.Cluster,
               :metrics,
               [[nodes: :all, instance: instance]],
               10_000
             )}
          end)
      end

    case result do
      {:ok, {:cluster, {:ok, m, %{missing: missing}}}} ->
        cluster_frame(m, missing)

      {:ok, m} ->
        measurements = for {k, v} <- m, is_number(v), into: %{}, do: {k, v}
        Causeway.Telemetry.execute([:causeway, :metrics], measurements, %{instance: instance})

        Causeway.Dashboard.render(m) <>
          "\n(#{DateTime.utc_now() |> DateTime.truncate(:second)}; Ctrl-C to stop)\n"

      {:error, message} ->
        "Causeway: #{message}\n"
    end
  end

  @doc false
  # one row per node, then the totals and the nodes that did not answer
  def cluster_frame(m, missing) do
    row = fn name, x ->
      [
        String.pad_trailing(to_string(name), 34),
        String.pad_leading(to_string(Map.get(x, :events_per_s, 0)), 12),
        String.pad_leading(to_string(Map.get(x, :persisted, 0)), 14),
        String.pad_leading(to_string(Map.get(x, :dropped_total, 0)), 12),
        String.pad_leading(to_string(div(Map.get(x, :native_memory, 0), 1_000_000)), 10),
        String.pad_leading(to_string(Map.get(x, :level, "")), 11),
        String.pad_leading(offset(Map.get(m.clock_offsets_ns, name)), 12),
        "\n"
      ]
    end

    IO.iodata_to_binary([
      "Causeway cluster (#{map_size(m.nodes)} nodes)\n",
      String.pad_trailing("node", 34),
      String.pad_leading("events/s", 12),
      String.pad_leading("persisted", 14),
      String.pad_leading("dropped", 12),
      String.pad_leading("native MB", 10),
      String.pad_leading("level", 11),
      String.pad_leading("clock off", 12),
      "\n",
      Enum.map(Enum.sort(m.nodes), fn {n, x} -> row.(n, x) end),
      row.("total", m.totals),
      Enum.map(missing, fn {n, why} -> "#{n}: no answer (#{inspect(why, limit: 5)})\n" end),
      "(#{DateTime.utc_now() |> DateTime.truncate(:second)}; Ctrl-C to stop)\n"
    ])
  end

  defp offset(nil), do: ""
  defp offset(ns), do: "#{Float.round(ns / 1_000_000, 2)} ms"

  defp safe(fun) do
    {:ok, fun.()}
  rescue
    e -> {:error, Exception.message(e)}
  catch
    kind, reason -> {:error, "#{kind}: #{inspect(reason)}"}
  end
end
