defmodule Causeway.Telemetry do
  @moduledoc """
  `:telemetry` events, emitted only when the `:telemetry` application is
  available (Causeway does not depend on it).

  | event | measurements | metadata |
  |-------|--------------|----------|
  | `[:causeway, :backpressure]` | `%{utilization: float}` | `%{level, previous, workers, batch_size, flush_interval_ms, dropped}` |
  | `[:causeway, :worker, :panic]`, `[:causeway, :worker, :storage_error]` | `%{count: 1}` | `%{worker, detail}` |
  | `[:causeway, :metrics]` | the numeric figures of `Causeway.metrics/0` | `%{instance: name}` (emitted by `mix causeway.top` each refresh) |
  """

  @doc "Emits an event through `:telemetry.execute/3` when `:telemetry` is loaded."
  @spec execute([atom()], map(), map()) :: :ok
  def execute(event, measurements, metadata) do
    if Code.ensure_loaded?(:telemetry) do
      # credo:disable-for-next-line
      apply(:telemetry, :execute, [event, measurements, metadata])
    end

    :ok
  end
end
