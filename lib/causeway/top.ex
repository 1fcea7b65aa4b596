defmodule Causeway.Top do
  @moduledoc """
  A live terminal dashboard: `Causeway.Dashboard.render/1` of an instance's
  metrics, redrawn every second until stopped. `mix causeway.top` runs it; from
  IEx, `Causeway.Top.run(count: 10)`.

  Options: `:instance` (default `Causeway`), `:node` (read the metrics of an
  instance on another connected node), `:interval_ms` (1000), `:count` (stop
  after that many frames; default: never), `:clear` (redraw in place with ANSI
  escapes, default true).

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
        clear: true
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
      case Keyword.get(opts, :node) do
        nil -> safe(fn -> Causeway.metrics(instance) end)
        node -> safe(fn -> :erpc.call(node, Causeway, :metrics, [instance], 5_000) end)
      end

    case result do
      {:ok, m} ->
        measurements = for {k, v} <- m, is_number(v), into: %{}, do: {k, v}
        Causeway.Telemetry.execute([:causeway, :metrics], measurements, %{instance: instance})

        Causeway.Dashboard.render(m) <>
          "\n(#{DateTime.utc_now() |> DateTime.truncate(:second)}; Ctrl-C to stop)\n"

      {:error, message} ->
        "Causeway: #{message}\n"
    end
  end

  defp safe(fun) do
    {:ok, fun.()}
  rescue
    e -> {:error, Exception.message(e)}
  catch
    kind, reason -> {:error, "#{kind}: #{inspect(reason)}"}
  end
end
