defmodule Causeway.Store do
  @moduledoc """
  A store opened with `Causeway.open/2`, to query without a running instance:

      {:ok, store} = Causeway.open("_causeway/demo")
      Causeway.events(store: store, limit: 10)
  """
  defstruct [:handle, :dir, read_only: true]

  @type t :: %__MODULE__{handle: reference(), dir: String.t(), read_only: boolean()}

  defimpl Inspect do
    def inspect(s, _opts),
      do: "#Causeway.Store<#{s.dir}#{if s.read_only, do: " read-only", else: ""}>"
  end
end
