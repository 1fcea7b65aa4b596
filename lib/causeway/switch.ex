defmodule Causeway.Switch.On do
  @moduledoc false
  # Whether the default instance (the one named `Causeway`, which
  # instrumented code reports to) is running: a constant. This is the
  # version loaded from the build; `Causeway.Switch` loads the other.
  def on?, do: false
end

defmodule Causeway.Switch do
  @moduledoc false
  require Logger

  # The check instrumented code makes before it reports anything: a call of
  # `Causeway.Switch.On.on?/0`, a function that returns a constant, so that
  # instrumented code with no instance running costs a remote call and a
  # `case` over plain code (measured in `mix bench instrument`), not a NIF
  # call (which cost ~25 % on the recursive encoder there).
  #
  # When the default instance starts, and after it stops, `sync/0` loads the
  # version of `Causeway.Switch.On` that says so (two binaries compiled here
  # at build time; loading one is hot code loading of a two-function
  # module, well under a millisecond). The switch is only an optimisation of
  # the "off" case: on, the NIF itself still finds whether an instance runs,
  # so a switch left on (an instance killed before its `terminate/2`) is
  # never wrong, only slower; it is turned on before the default instance
  # is published and off after it is gone.

  for on <- [true, false] do
    forms = [
      {:attribute, 1, :module, Causeway.Switch.On},
      {:attribute, 1, :export, [on?: 0]},
      {:function, 1, :on?, 0, [{:clause, 1, [], [], [{:atom, 1, on}]}]}
    ]

    {:ok, Causeway.Switch.On, bin} = :compile.forms(forms, [:deterministic])
    defp binary(unquote(on)), do: unquote(bin)
  end

  @doc false
  # Makes `Causeway.Switch.On.on?/0` say whether the default instance is
  # published now (serialised: the last call wins, and it reads the truth).
  def sync do
    :global.trans({__MODULE__, self()}, fn -> load(running?()) end, [node()])
  end

  defp running?, do: match?({:ok, _}, Causeway.Instance.whereis(Causeway))

  defp load(on) do
    if Causeway.Switch.On.on?() == on, do: :ok, else: load(on, 100)
  end

  defp load(on, tries) do
    # an old version is only dropped when no process runs it (never kill)
    if :code.soft_purge(Causeway.Switch.On) do
      case :code.load_binary(Causeway.Switch.On, ~c"causeway_switch", binary(on)) do
        {:module, _} -> :ok
        {:error, why} -> failed(on, why)
      end
    else
      if tries == 0, do: failed(on, :not_purged), else: retry(on, tries)
    end
  end

  defp failed(on, why) do
    Logger.warning(
      "Causeway: could not switch instrumented code #{if on, do: "on", else: "off"} " <>
        "(#{inspect(why)}): " <>
        if(on,
          do: "instrumented code records nothing until the instance is started again",
          else: "it keeps asking the NIF, which finds no instance"
        )
    )

    {:error, why}
  end

  defp retry(on, tries) do
    Process.sleep(1)
    load(on, tries - 1)
  end
end
