defmodule Causeway.Stores do
  @moduledoc """
  Several stores opened together with `Causeway.open([dir_a, dir_b, ...])`:
  the post-mortem of a cluster whose nodes' stores were copied to one
  machine. Pass it as `store:` to `Causeway.events/1`,
  `Causeway.state_history/2` and `Causeway.message_flow/3`: each store is
  asked, and the answers are merged by wall time (each event keeps the
  `node` it was recorded on), as `nodes:` queries are.

      {:ok, all} = Causeway.open(["copies/a", "copies/b"], read_only: true)
      Causeway.events(store: all, module: MyApp.Cart)
      Causeway.close(all)
  """
  defstruct stores: []

  @type t :: %__MODULE__{stores: [Causeway.Store.t()]}

  defimpl Inspect do
    def inspect(s, _opts),
      do: "#Causeway.Stores<" <> Enum.map_join(s.stores, ", ", & &1.dir) <> ">"
  end
end
