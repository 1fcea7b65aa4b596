defmodule Causeway.Test.FakeTelemetry do
  @moduledoc false
  # :telemetry is not available here (no Hex). This stand-in implements the
  # part of its documented API Causeway uses — attach/4, detach/1 and
  # execute/3 calling each attached handler in the emitting process — so
  # the attach paths are exercised. Tests install it and uninstall it when
  # they end; it is never loaded otherwise.

  def install do
    Module.create(
      :telemetry,
      quote do
        def attach(id, event, fun, config) do
          :persistent_term.put({:fake_telemetry, id}, {event, fun, config})
          :ok
        end

        def detach(id) do
          :persistent_term.erase({:fake_telemetry, id})
          :ok
        end

        def execute(event, measurements, metadata) do
          for {{:fake_telemetry, _}, {^event, fun, config}} <- :persistent_term.get(),
              do: fun.(event, measurements, metadata, config)

          :ok
        end
      end,
      Macro.Env.location(__ENV__)
    )
  end

  def uninstall do
    :code.purge(:telemetry)
    :code.delete(:telemetry)
    :code.purge(:telemetry)
  end

  @doc "The handlers still attached."
  def attached, do: for({{:fake_telemetry, id}, _} <- :persistent_term.get(), do: id)
end
