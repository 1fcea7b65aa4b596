defmodule Causeway.CallTree do
  @moduledoc """
  A call with its exit and nested calls, as `Causeway.call_tree/2` returns it.

  `duration_ns` is exit timestamp minus entry timestamp (`nil` while the call
  has no recorded exit); `result` is the return value or `{:exception, kind,
  reason}`.
  """
  defstruct [:entry, :exit, :duration_ns, :result, children: []]

  @type t :: %__MODULE__{
          entry: Causeway.Event.t(),
          exit: Causeway.Event.t() | nil,
          duration_ns: non_neg_integer() | nil,
          result: term(),
          children: [t()]
        }

  @doc false
  def from_native({entry, exit, children}) do
    entry = Causeway.Event.from_native(entry)
    exit = if exit, do: Causeway.Event.from_native(exit)

    %__MODULE__{
      entry: entry,
      exit: exit,
      duration_ns: if(exit, do: exit.timestamp - entry.timestamp),
      result: if(exit, do: exit.data, else: :no_exit_recorded),
      children: Enum.map(children, &from_native/1)
    }
  end

  @doc "Renders the tree as indented text, one call per line."
  @spec format(t(), non_neg_integer()) :: String.t()
  def format(%__MODULE__{} = t, indent \\ 0) do
    pad = String.duplicate("  ", indent)

    line =
      "#{pad}#{name(t.entry)}(#{args(t.entry.data)}) → " <>
        "#{Causeway.Event.short(t.result)}#{duration(t.duration_ns)}"

    Enum.join([line | Enum.map(t.children, &format(&1, indent + 1))], "\n")
  end

  defp name(%{module: m, function: f}) when is_atom(m), do: "#{inspect(m)}.#{f}"
  defp name(%{module: m, function: f}), do: "#{m}.#{f}"

  defp args(list) when is_list(list), do: Enum.map_join(list, ", ", &Causeway.Event.short/1)
  defp args(other), do: Causeway.Event.short(other)

  defp duration(nil), do: "  (no exit recorded)"
  defp duration(ns) when ns < 10_000, do: "  [#{ns} ns]"
  defp duration(ns) when ns < 10_000_000, do: "  [#{Float.round(ns / 1000, 1)} µs]"
  defp duration(ns), do: "  [#{Float.round(ns / 1_000_000, 2)} ms]"

  defimpl Inspect do
    def inspect(t, _opts) do
      "#Causeway.CallTree<\n" <> Causeway.CallTree.format(t, 1) <> "\n>"
    end
  end
end
